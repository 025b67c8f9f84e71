"""Your own model, task and metrics from a TOML file to a deployed fleet (issue 20's acceptance).

A user's package written here — a tiny regression network with BatchNorm, its own loader (no central test
set: the clients' held-out data judges the model), an F1-style metric and its aggregation — goes through
`fedstack run`, then a TLS `fedstack server` with two `fedstack client`s on loopback (one with its own .npz
of real-valued targets and held-out rows, one with a partition of the loader's data), then
`fedstack export --format onnx`, checked here with ONNX Runtime. The user's code imports no fedstack."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from deployment import start_client, start_server
from fedstack.transport.security import make_credentials

PACKAGE = """
import numpy as np
import torch

def make_model():
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(),
                               torch.nn.Linear(16, 1))

def samples(n, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    return x, (x @ np.linspace(-1, 1, 6) + 0.1 * rng.normal(size=n)).astype(np.float32)

def load():  # no central test set: evaluation is federated
    x, y = samples(600, 0)
    return x, y, None, None

def metrics(predictions, targets):  # "is the target positive?" as sums over the batch, for an F1 score
    said, truth = predictions[:, 0] > 0, targets > 0
    return {"tp": (said & truth).sum(), "fp": (said & ~truth).sum(), "fn": (~said & truth).sum()}

def f1(sums, examples):
    return {"f1": 2 * sums["tp"] / max(2 * sums["tp"] + sums["fp"] + sums["fn"], 1.0)}
"""

CONFIG = """
seed = 3

[model]
name = "ownpkg:make_model"
task = "regression"
metrics = "ownpkg:metrics"

[data]
name = "ownpkg:load"
num_clients = 2
partition = "iid"
holdout = 0.2

[server]
rounds = 4
clients_per_round = 2
min_clients = 2

[client]
lr = 0.05
epochs = 2
lr_schedule = "cosine"

[eval]
metrics_aggregation = "ownpkg:f1"
"""


def fedstack(cwd, *args, timeout=240):
    return subprocess.run([sys.executable, "-m", "fedstack.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def rounds_of(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def check_learned(rounds, clients):
    first, last = rounds[0], rounds[-1]
    assert all(r["test_loss"] is not None and r["test_accuracy"] is None for r in rounds)  # federated, each round
    assert last["test_loss"] < 0.5 * first["test_loss"], [r["test_loss"] for r in rounds]
    assert last["test_metrics"]["f1"] > 0.8 and set(last["test_metrics"]) == {"f1"}
    assert last["federated"]["of"] == "loss" and last["federated"]["clients"] == clients


@pytest.fixture
def project(tmp_path):
    (tmp_path / "ownpkg.py").write_text(textwrap.dedent(PACKAGE))
    (tmp_path / "own.toml").write_text(CONFIG)
    return tmp_path


def test_own_package_runs_deploys_over_tls_and_exports_to_onnx(project):
    # `fedstack run` of the TOML, in its own process while the deployment below starts and runs
    simulated = subprocess.Popen([sys.executable, "-m", "fedstack.cli", "run", "own.toml", "--out",
                                  str(project / "sim")], cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True)

    # The first device brings its own file: real-valued targets and held-out rows; the second a partition.
    sys.path.insert(0, str(project))
    try:
        import ownpkg
    finally:
        sys.path.remove(str(project))
    x, y = ownpkg.samples(300, 1)
    np.savez(project / "device.npz", x=x[:240], y=y[:240], x_test=x[240:], y_test=y[240:])
    creds = make_credentials(project / "certs", 2)
    # --heartbeat 1: the server's goodbye to polling clients at the end takes 1 s, not the default's 2
    server, port = start_server(project, creds, [], "--config", str(project / "own.toml"), "--heartbeat", "1",
                                cwd=project)
    clients = [start_client(port, creds, 1, "--data", str(project / "device.npz"), cwd=project),
               start_client(port, creds, 2, "--partition", "1", cwd=project)]
    try:
        _, err = simulated.communicate(timeout=240)
        assert simulated.returncode == 0, err
        _, err = server.communicate(timeout=240)
        assert server.returncode == 0, err
        for client in clients:
            out, err = client.communicate(timeout=60)
            assert client.returncode == 0 and "4 updates accepted" in out, err
    finally:
        for proc in (simulated, server, *clients):
            proc.kill()
    check_learned(rounds_of(project / "sim"), clients=2)
    check_learned(rounds_of(project / "run"), clients=2)

    exported = fedstack(project, "export", str(project / "run"), "--format", "onnx", "--out", "model.onnx")
    assert exported.returncode == 0 and "ONNX Runtime reproduces" in exported.stdout, exported.stderr
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(project / "model.onnx"))
    held_x, held_y = x[240:], y[240:]
    predicted = session.run(None, {session.get_inputs()[0].name: held_x})[0][:, 0]
    assert np.mean((predicted - held_y) ** 2) < 0.5 * np.var(held_y)  # the deployed model predicts
