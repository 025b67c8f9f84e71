import json
import numpy as np
import pytest

from fedstack.plan import load_config
from fedstack.errors import FedstackError
from fedstack.experiment import run_config
from fedstack.store import RunStore
from fedstack.strategy import Strategy

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
    with pytest.raises(FedstackError, match="holds another run"):
        run_config(load_config(None, [*SMALL, "client.lr=0.5"]), tmp_path / "run")


class MomentumAvg(Strategy):
    """FedAvg with server momentum: state that must survive a crash for the resumed run to match."""

    stateful = True

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

    from fedstack.experiment import simulate
    from fedstack.loop import Evaluation, Parts
    from fedstack.plan import initial_params, make_trainer
    from fedstack.data import build_dataset

    data = build_dataset("digits", num_clients=6, partition="iid", alpha=1, seed=0)
    factory = functools.partial(make_trainer, "logreg", (1, 8, 8), 10, "sgd")
    p0 = initial_params(factory, 0)
    run = functools.partial(simulate, factory, data, p0, rounds=4, clients_per_round=3,
                            evaluation=Evaluation(federated=False))
    unbroken = run(strategy=MomentumAvg(), out=tmp_path / "a")
    with pytest.raises(Crash):
        run(strategy=MomentumAvg(), out=tmp_path / "b", parts=Parts(callbacks=[crash_after(2)]))
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


# --- first-hour regressions (issue: wrong results a new user meets) ---

def _trainer(hidden):
    import torch

    from fedstack.client import TorchTrainer

    layers = [torch.nn.Flatten(), torch.nn.Linear(64, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 10)] \
        if hidden else [torch.nn.Flatten(), torch.nn.Linear(64, 10)]
    return TorchTrainer(torch.nn.Sequential(*layers))


def _api_run(out, hidden=0, clients=8, rounds=2):
    import functools

    from fedstack.data import build_dataset
    from fedstack.experiment import simulate
    from fedstack.loop import Evaluation
    from fedstack.plan import initial_params

    factory = functools.partial(_trainer, hidden)
    data = build_dataset("digits", num_clients=clients, partition="iid", alpha=0.5, seed=0)
    return simulate(factory, data, initial_params(factory, 0), rounds=rounds, clients_per_round=3, out=out,
                    evaluation=Evaluation(federated=False))


def test_a_run_directory_of_another_model_or_data_is_refused_naming_what_differs(tmp_path, caplog):
    first = _api_run(tmp_path / "mine")
    with pytest.raises(FedstackError, match="holds another run: its model was 650 parameters"):
        _api_run(tmp_path / "mine", hidden=12)  # was: silently the previous run's parameters and accuracies
    with pytest.raises(FedstackError, match="holds another run: its data was .* 8 clients"):
        _api_run(tmp_path / "mine", clients=6)
    again = _api_run(tmp_path / "mine", rounds=3)  # the same run, further: a resume, and it says so
    assert "resuming" in caplog.text and "from round 3" in caplog.text
    np.testing.assert_array_equal(again.rounds[1]["test_accuracy"], first.rounds[1]["test_accuracy"])
    assert [r["round"] for r in again.rounds] == [1, 2, 3]


def test_a_resume_with_another_config_names_the_key(tmp_path):
    with pytest.raises(Crash):
        run_config(load_config(None, SMALL), tmp_path / "run", on_round=[crash_after(1)])
    with pytest.raises(FedstackError, match="config key 'client.lr' was 0.2, this one's is 0.5"):
        run_config(load_config(None, [*SMALL, "client.lr=0.5"]), tmp_path / "run")


@pytest.mark.parametrize("change, message", [
    ({"rounds": -1}, "rounds must be an integer >= 1, got -1"),
    ({"clients_per_round": 0}, "clients_per_round must be an integer >= 1"),
    ({"strategy": "fedavg"}, "strategy must be a strategy object such as fedstack.FedAvg"),
    ({"initial_params": np.zeros(835, np.float32)}, "initial_params holds 835 values, but the trainer's model has"),
])
def test_the_python_api_checks_its_arguments_before_any_work(change, message):
    import functools

    from fedstack.data import build_dataset
    from fedstack.experiment import simulate
    from fedstack.plan import initial_params

    factory = functools.partial(_trainer, 0)
    data = build_dataset("digits", num_clients=8, partition="iid", alpha=0.5, seed=0)
    args = {**dict(initial_params=initial_params(factory, 0), rounds=2, clients_per_round=3), **change}
    with pytest.raises(FedstackError, match=message):
        simulate(factory, data, args.pop("initial_params"), **args)


def test_fit_config_refuses_what_the_config_refuses():
    from fedstack.client import FitConfig

    for bad, message in ((dict(lr=-1.0), "FitConfig.lr must be a number > 0, got -1.0"),
                         (dict(batch_size=0), "FitConfig.batch_size must be an integer >= 1"),
                         (dict(epochs=1.5), "FitConfig.epochs must be an integer"),
                         (dict(mu=float("nan")), "FitConfig.mu")):
        with pytest.raises(FedstackError, match=message):
            FitConfig(**bad)
