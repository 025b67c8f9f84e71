import json
import numpy as np
import pytest

from fedstack.config import load_config
from fedstack.errors import FedstackError
from fedstack.experiment import run_config
from fedstack.store import RunStore

from crashes import Crash, crash_after

SMALL = ["data.name=digits", "data.num_clients=8", "model.name=mlp", "server.rounds=3",
         "server.clients_per_round=3", "engine.name=local", "seed=5"]


def test_a_crashed_run_resumes_after_its_last_round_with_the_same_bits(tmp_path):
    config = load_config(None, SMALL)
    unbroken = run_config(config, tmp_path / "unbroken")
    with pytest.raises(Crash):
        run_config(config, tmp_path / "broken", on_round=[crash_after(2)])
    assert [r["round"] for r in RunStore(tmp_path / "broken" / "store.sqlite").rounds()] == [1, 2]
    resumed = run_config(config, tmp_path / "broken")
    assert np.array_equal(resumed.params, unbroken.params)
    assert [r["round"] for r in resumed.rounds] == [1, 2, 3]
    lines = (tmp_path / "broken" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3


def test_resuming_with_another_config_is_refused(tmp_path):
    with pytest.raises(Crash):
        run_config(load_config(None, SMALL), tmp_path / "run", on_round=[crash_after(1)])
    with pytest.raises(FedstackError, match="another config"):
        run_config(load_config(None, [*SMALL, "client.lr=0.5"]), tmp_path / "run")


class MomentumAvg:
    """FedAvg with server momentum: state that must survive a crash for the resumed run to match."""

    def __init__(self):
        from fedstack.client import FitConfig
        from fedstack.strategy import FedAvg

        self.inner, self.velocity = FedAvg(FitConfig(lr=0.1)), None

    def configure(self, round, params, ids):
        return self.inner.configure(round, params, ids)

    def aggregate(self, round, params, updates):
        step = self.inner.aggregate(round, params, updates) - params
        self.velocity = step if self.velocity is None else 0.9 * self.velocity + step
        return params + self.velocity

    def state(self):
        return {} if self.velocity is None else {"velocity": self.velocity}

    def load_state(self, state):
        self.velocity = state.get("velocity")


def test_strategy_state_is_checkpointed_and_restored(tmp_path):
    import functools

    from fedstack.experiment import initial_params, make_trainer, simulate
    from fedstack.data import build_dataset

    data = build_dataset("digits", num_clients=6, partition="iid", alpha=1, seed=0)
    factory = functools.partial(make_trainer, "logreg", (1, 8, 8), 10, "sgd")
    p0 = initial_params(factory, 0)
    run = functools.partial(simulate, factory, data, p0, rounds=4, clients_per_round=3, federated_eval=False)
    unbroken = run(strategy=MomentumAvg(), out=tmp_path / "a")
    with pytest.raises(Crash):
        run(strategy=MomentumAvg(), out=tmp_path / "b", on_round=[crash_after(2)])
    resumed = run(strategy=MomentumAvg(), out=tmp_path / "b")
    assert np.array_equal(resumed.params, unbroken.params)
    assert set(RunStore(tmp_path / "b" / "store.sqlite").strategy_state()) == {"velocity"}


def test_fine_tuning_personalises_clients_with_skewed_labels(tmp_path):
    # Dirichlet(0.1) gives each client a few labels: a few local steps on them lift its held-out accuracy.
    config = load_config(None, ["data.name=digits", "data.num_clients=10", "data.alpha=0.1", "data.holdout=0.3",
                                "model.name=logreg", "server.rounds=2", "server.clients_per_round=5",
                                "engine.name=local", "eval.finetune_steps=20", "client.lr=0.1"])
    history = run_config(config, tmp_path / "run")
    last = history.rounds[-1]
    before, after = last["federated"], last["personalized"]
    assert before["clients"] == after["clients"] == 10
    assert after["mean"] > before["mean"] + 0.05 and after["p10"] >= before["p10"]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["final"]["personalized"] == after
    # deterministic: the same config gives the same fine-tuned figures
    assert run_config(config, tmp_path / "again").rounds[-1]["personalized"] == after
