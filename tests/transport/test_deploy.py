"""A real deployment on loopback: a server process and client processes over gRPC with TLS and tokens."""

import json
import subprocess
import sys

import pytest

from fedstack.transport.security import make_credentials

RUN = ["--set", "data.name=digits", "--set", "data.num_clients=3", "--set", "model.name=mlp",
       "--set", "server.rounds=3", "--set", "server.clients_per_round=3", "--set", "server.min_clients=3",
       "--set", "client.lr=0.1", "--set", "client.epochs=2"]


def start_server(tmp_path, creds, *extra):
    proc = subprocess.Popen([sys.executable, "-m", "fedstack.cli", "server", *RUN, "--clients",
                             str(creds / "clients.toml"), "--listen", "127.0.0.1:0", "--out", str(tmp_path / "run"),
                             "--quiet", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.startswith("listening on 127.0.0.1:"), line + proc.stderr.read()
    return proc, int(line.rsplit(":", 1)[1])


def start_client(port, creds, i, *extra):
    return subprocess.Popen([sys.executable, "-m", "fedstack.cli", "client", "--server", f"127.0.0.1:{port}",
                             "--token-file", str(creds / f"client-{i}.token"), "--partition", str(i - 1), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def creds(tmp_path):
    return make_credentials(tmp_path / "certs", 4)


def test_tls_and_tokens_end_to_end(tmp_path, creds):
    # --heartbeat 1: the server's goodbye to polling clients at the end takes 1 s, not the default's 2
    server, port = start_server(tmp_path, creds, "--tls-cert", str(creds / "server.pem"),
                                "--tls-key", str(creds / "server.key"), "--heartbeat", "1")
    tls = ["--ca", str(creds / "ca.pem")]
    forged = tmp_path / "forged.token"
    forged.write_text("not-a-registered-token")
    # the intruder knocks while the registered clients start
    intruder = subprocess.Popen([sys.executable, "-m", "fedstack.cli", "client", "--server", f"127.0.0.1:{port}",
                                 "--token-file", str(forged), "--partition", "0", *tls],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    clients = [start_client(port, creds, i, *tls) for i in range(1, 4)]
    try:
        _, intruder_err = intruder.communicate(timeout=60)
        out, err = server.communicate(timeout=240)
        assert server.returncode == 0, err
        for c in clients:
            c_out, c_err = c.communicate(timeout=60)
            assert c.returncode == 0, c_err
            assert "3 updates accepted" in c_out
    finally:
        for p in [server, intruder, *clients]:
            p.kill()
    assert intruder.returncode == 2 and "unknown or missing client token" in intruder_err
    rounds = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["clients"] for r in rounds] == [3, 3, 3]
    assert rounds[-1]["test_accuracy"] > rounds[0]["test_accuracy"] and rounds[-1]["test_accuracy"] > 0.5
    assert (tmp_path / "run" / "report.png").exists()
    # A deployed run declares itself: no simulated time; each kind of refusal on a line that says what it is.
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["deployed"] is True and summary["total_time_s"] > summary["final"]["wall_time_s"] > 0
    assert "simulated" not in out and "wall time of the rounds" in out
    assert "× unauthenticated: calls with an unknown or missing client token" in out, out
    assert "fedstack server: listening on" in (tmp_path / "run" / "run.log").read_text()


def test_plaintext_needs_insecure_and_says_so(tmp_path, creds):
    proc = subprocess.run([sys.executable, "-m", "fedstack.cli", "server", *RUN, "--clients",
                           str(creds / "clients.toml"), "--listen", "127.0.0.1:0"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--insecure" in proc.stderr


def test_a_heartbeat_that_is_not_positive_is_refused(tmp_path, creds):
    proc = subprocess.run([sys.executable, "-m", "fedstack.cli", "server", *RUN, "--clients",
                           str(creds / "clients.toml"), "--listen", "127.0.0.1:0", "--insecure", "--heartbeat", "0"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--heartbeat" in proc.stderr and "Traceback" not in proc.stderr
