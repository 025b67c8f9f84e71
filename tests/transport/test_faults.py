"""Faults in a real deployment: a client killed mid-run, the server killed with SIGKILL and restarted."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from fedstack.plan import load_config
from fedstack.experiment import run_config
from fedstack.store import RunStore
from fedstack.transport.security import make_credentials

# server.max_examples: deployed updates keep the weights a simulation gives them (bounded, not equal).
# Three devices: enough for a run that goes on without one of them (each a process that imports PyTorch).
BASE = ["data.name=digits", "data.num_clients=3", "model.name=mlp", "server.clients_per_round=3",
        "client.lr=0.1", "client.epochs=2", "server.max_examples=100000"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_cmd(creds, port, out, overrides, *extra):
    sets = [a for o in overrides for a in ("--set", o)]
    return [sys.executable, "-m", "fedstack.cli", "server", *sets, "--clients", str(creds / "clients.toml"),
            "--listen", f"127.0.0.1:{port}", "--out", str(out), "--quiet", "--tls-cert", str(creds / "server.pem"),
            "--tls-key", str(creds / "server.key"), "--share-seed", *extra]


def client(creds, port, i):
    return subprocess.Popen([sys.executable, "-m", "fedstack.cli", "client", "--server", f"127.0.0.1:{port}",
                             "--token-file", str(creds / f"client-{i}.token"), "--partition", str(i - 1),
                             "--ca", str(creds / "ca.pem")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_rounds(metrics, n, proc, timeout=180):
    end = time.time() + timeout
    while time.time() < end:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= n:
            return
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.1)
    raise AssertionError(f"no round {n} within {timeout} s")


@pytest.fixture
def creds(tmp_path):
    return make_credentials(tmp_path / "certs", 3)


def test_server_killed_mid_run_resumes_and_ends_with_the_bits_of_a_simulation(tmp_path, creds):
    overrides = [*BASE, "server.rounds=4", "server.min_clients=3"]
    port, out = free_port(), tmp_path / "run"
    server = subprocess.Popen(server_cmd(creds, port, out, overrides), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    clients = [client(creds, port, i) for i in range(1, 4)]
    try:
        wait_for_rounds(out / "metrics.jsonl", 1, server)
        os.kill(server.pid, signal.SIGKILL)
        server.wait()
        restarted = subprocess.run(server_cmd(creds, port, out, overrides), capture_output=True, text=True,
                                   timeout=240)
        assert restarted.returncode == 0, restarted.stderr
        for c in clients:
            assert c.wait(timeout=60) == 0, c.stderr.read()
    finally:
        for p in [server, *clients]:
            p.kill()
    rounds = [json.loads(line)["round"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rounds == [1, 2, 3, 4]
    last, deployed = RunStore(out / "store.sqlite").checkpoint()
    simulated = run_config(load_config(None, [*overrides, "engine.name=local"]), tmp_path / "sim")
    assert last == 4 and np.array_equal(deployed, simulated.params)


def test_a_client_killed_mid_run_is_a_dropout_and_the_run_completes(tmp_path, creds):
    # Six rounds: the kill lands after round 1 and well before the end, however fast the rounds run (with three,
    # a fast machine had finished them all before the kill reached the client).
    overrides = [*BASE, "server.rounds=6", "server.min_clients=2"]
    port, out = free_port(), tmp_path / "run"
    server = subprocess.Popen(server_cmd(creds, port, out, overrides, "--heartbeat", "1"), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)  # the default 600 s deadline: loss of contact counts
    clients = [client(creds, port, i) for i in range(1, 4)]
    try:
        wait_for_rounds(out / "metrics.jsonl", 1, server)
        clients[2].kill()
        killed = time.time()
        done_before = len((out / "metrics.jsonl").read_text().splitlines())
        stdout, stderr = server.communicate(timeout=240)
        assert time.time() - killed < 60  # noticed by three missed 1 s heartbeats, not the deadline
        assert server.returncode == 0, stderr
        for c in clients[:2]:
            assert c.wait(timeout=60) == 0
    finally:
        for p in [server, *clients]:
            p.kill()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert all(r["clients"] >= 2 for r in records)
    assert done_before < 6, "the run ended before the kill: nothing was tested"
    # The dead client was sampled and lost (a dropout), or the server saw its connection close before a later
    # round began and sampled among the two left: which comes first is the kernel's timing, not the test's.
    # (The round running at the kill may have been answered by the client just before it.)
    after = records[done_before:]
    assert sum(r["failures"] for r in after) >= 1 or after[-1]["sampled"] == 2, (after, stderr)
