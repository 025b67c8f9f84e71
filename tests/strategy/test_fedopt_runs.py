"""Server optimizers in whole runs: they learn, and a crashed run resumes with their moments intact."""

import numpy as np
import pytest

from fedstack.plan import load_config
from fedstack.experiment import run_config

from crashes import Crash, crash_after

BASE = ["data.name=digits", "data.num_clients=10", "model.name=logreg", "server.rounds=5",
        "server.clients_per_round=4", "engine.name=local", "eval.federated=false", "client.lr=0.1"]
SERVER_LR = {"fedavgm": 0.5, "fedadagrad": 0.1, "fedadam": 0.05, "fedyogi": 0.05}


@pytest.mark.parametrize("kind", sorted(SERVER_LR))
def test_server_optimizer_learns_and_resumes_bit_exactly(kind, tmp_path):
    config = load_config(None, [*BASE, f"server.strategy={kind}", f"server.server_lr={SERVER_LR[kind]}"])
    unbroken = run_config(config, tmp_path / "a")
    accuracy = [r["test_accuracy"] for r in unbroken.rounds]
    assert accuracy[-1] > max(0.5, accuracy[0]), accuracy
    with pytest.raises(Crash):
        run_config(config, tmp_path / "b", on_round=[crash_after(3)])
    assert np.array_equal(run_config(config, tmp_path / "b").params, unbroken.params)
