"""Your own model, data and per-round client configuration, named in TOML (issue 20, first part):
`model.name = "package.module:function"`, `data.name = "package.module:function"`, `client.lr_schedule`,
`client.epochs_by_round` — through `fedstack run` and the same plan every engine uses."""

import json
import subprocess
import sys
import textwrap
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, strategies as st

from fedstack.client import FitConfig
from fedstack.errors import ConfigError
from fedstack.experiment import run_config
from fedstack.plan import load_config
from fedstack.schedules import ClientSchedule, FitSchedule, scheduled_epochs, scheduled_lr
from fedstack.strategy import Task
from user_parts import REGRESSION

# A user's package: a small network with BatchNorm, and a loader of their own arrays. It imports no fedstack.
NETS = """
import torch

def make_model():
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.BatchNorm1d(16),
                               torch.nn.ReLU(), torch.nn.Linear(16, 10))
"""
DATA = """
import numpy as np
from sklearn.datasets import load_digits

def load():
    x, y = load_digits(return_X_y=True)
    x = (x / 16).astype(np.float32)
    return x[:1500], y[:1500].astype(np.int64), x[1500:], y[1500:].astype(np.int64)
"""


def write_package(root, name):
    package = root / name
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(textwrap.dedent(NETS))
    (package / "data.py").write_text(textwrap.dedent(DATA))


def own(name, *extra):
    return ["--set", f'model.name="{name}.nets:make_model"', "--set", f'data.name="{name}.data:load"',
            "--set", "data.num_clients=8", "--set", "server.clients_per_round=4", "--set", "server.rounds=3",
            "--set", "eval.federated=false", "--set", "client.lr=0.1", *extra]


def fedstack_run(cwd, *args):
    return subprocess.run([sys.executable, "-m", "fedstack.cli", "run", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def fedstack_runs(cwd, runs):
    """`fedstack run` with each list of arguments in `runs`, side by side (each is one process most of the
    time, and there are two cores); their completed processes, in order."""
    procs = [subprocess.Popen([sys.executable, "-m", "fedstack.cli", "run", *args], cwd=cwd, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for args in runs]
    try:
        outputs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            p.kill()
    return [subprocess.CompletedProcess(p.args, p.returncode, out, err) for p, (out, err) in zip(procs, outputs)]


def test_an_own_model_and_loader_named_in_toml_run_with_the_same_bits_on_local_and_pool(tmp_path):
    write_package(tmp_path, "userpkg")
    finals = {}
    engines = ("local", "pool")
    runs = [[*own("userpkg", "--set", f"engine.name={engine}", "--set", "engine.workers=2",
                  "--set", 'client.lr_schedule="step"', "--set", "client.lr_step_rounds=1",
                  "--set", "client.epochs_by_round=[[2, 2]]"), "--out", str(tmp_path / engine)] for engine in engines]
    procs = fedstack_runs(tmp_path, runs)
    for engine, proc in zip(engines, procs):
        out = tmp_path / engine
        assert proc.returncode == 0, proc.stderr
        summary = json.loads((out / "summary.json").read_text())
        finals[engine] = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert summary["final"]["test_accuracy"] > 0.3  # learns (chance: 0.1) in three short rounds
    strip = [[{k: v for k, v in r.items() if k not in ("wall_time_s", "profile")} for r in rounds]
             for rounds in finals.values()]
    assert strip[0] == strip[1]  # the same figures, round by round (the test loss to the last bit)


def test_a_reference_that_does_not_import_is_one_line_naming_the_key(tmp_path):
    proc = fedstack_run(tmp_path, "--set", 'model.name="nosuchpkg.nets:make_model"', "--set", "data.name=digits",
                        "--set", "server.rounds=1", "--out", str(tmp_path / "run"))
    assert proc.returncode == 2 and "model.name" in proc.stderr and "nosuchpkg" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    with pytest.raises(ConfigError, match="did you mean 'cnn'"):
        load_config(None, ["model.name=cnnn"])
    with pytest.raises(ConfigError, match="data.name"):
        load_config(None, ["data.name=my data"])
    with pytest.raises(ConfigError, match="client.epochs_by_round"):
        load_config(None, ["client.epochs_by_round=[[3, 1], [2, 1]]"])


def test_a_loader_returning_something_else_is_refused_naming_the_key(tmp_path, monkeypatch):
    package = tmp_path / "oddpkg"
    package.mkdir()
    (package / "__init__.py").write_text("def load():\n    return [1, 2]\n\ndef model():\n    return 'a string'\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="data.name.*expected a FederatedDataset or a tuple"):
        run_config(load_config(None, ['data.name="oddpkg:load"']), tmp_path / "a")
    with pytest.raises(ConfigError, match="model.name.*expected a torch.nn.Module"):
        run_config(load_config(None, ["data.name=digits", 'model.name="oddpkg:model"']), tmp_path / "b")


def test_learning_rate_schedules_by_hand():
    assert [scheduled_lr(r, 0.8, "step", decay=0.5, step_rounds=2) for r in (1, 2, 3, 4, 5)] == \
        [0.8, 0.8, 0.4, 0.4, 0.2]
    assert [scheduled_lr(r, 0.8, "exponential", decay=0.5) for r in (1, 2, 3)] == [0.8, 0.4, 0.2]
    assert scheduled_lr(1, 0.8, "cosine", rounds=4) == 0.8
    assert scheduled_lr(3, 0.8, "cosine", lr_min=0.2, rounds=4) == pytest.approx(0.2 + 0.6 * 0.5)  # cos(π/2) = 0
    assert scheduled_epochs(1, 1, ((3, 2), (5, 0))) == 1 and scheduled_epochs(4, 1, ((3, 2), (5, 0))) == 2
    assert scheduled_epochs(9, 1, ((3, 2), (5, 0))) == 0


@given(lr=st.floats(1e-4, 1.0), floor=st.floats(0.0, 1.0), rounds=st.integers(1, 200), kind=st.sampled_from(
    ["step", "exponential", "cosine"]), decay=st.floats(0.01, 1.0))
def test_a_schedule_never_raises_the_rate_and_stays_positive(lr, floor, rounds, kind, decay):
    lr_min = floor * lr
    rates = [scheduled_lr(r, lr, kind, decay=decay, step_rounds=3, lr_min=lr_min, rounds=rounds)
             for r in range(1, rounds + 1)]
    assert all(b <= a * (1 + 1e-12) for a, b in zip(rates, rates[1:]))
    assert all(rate > 0 for rate in rates) and rates[0] == pytest.approx(lr)


def test_a_schedule_configures_each_task_from_the_strategys_base_config():
    base = Task(3, 7, FitConfig(lr=0.4, epochs=1))
    task = ClientSchedule("step", lr_decay=0.5, lr_step_rounds=1, epochs_by_round=((3, 4),)).configure(base)
    assert (task.config.lr, task.config.epochs, task.client_id) == (0.1, 4, 7)
    halved = FitSchedule(lambda rnd, config: replace(config, lr=config.lr / rnd)).configure(base)
    assert halved.config.lr == pytest.approx(0.4 / 3)
    assert not ClientSchedule.synchronous_only  # every schedule has round numbers: sync, async and gossip


@pytest.mark.parametrize("schedule", [["server.strategy=fedbuff", "server.concurrency=3"],
                                      ["decentralized.topology=ring"]])
def test_a_schedule_acts_in_the_asynchronous_and_gossip_schedules_too(schedule, tmp_path):
    base = ["data.name=digits", "data.num_clients=6", "server.clients_per_round=3", "model.name=logreg",
            "server.rounds=3", "eval.federated=false", "eval.every=0", *schedule]
    plain = run_config(load_config(None, base), tmp_path / "plain").params
    decayed = run_config(load_config(None, [*base, 'client.lr_schedule="exponential"', "client.lr_decay=0.1"]),
                         tmp_path / "decayed").params
    assert not np.array_equal(plain, decayed)




def test_a_regression_with_its_own_metrics_runs_from_toml_with_the_same_bits_on_local_and_pool(tmp_path):
    (tmp_path / "regpkg.py").write_text(textwrap.dedent(REGRESSION))
    common = ["--set", 'model.name="regpkg:make_model"', "--set", 'data.name="regpkg:load"',
              "--set", 'model.task="regression"', "--set", 'model.metrics="regpkg:metrics"',
              "--set", 'eval.metrics_aggregation="regpkg:aggregate"', "--set", 'data.partition="iid"',
              "--set", "data.num_clients=8", "--set", "server.clients_per_round=4", "--set", "server.rounds=4",
              "--set", "client.lr=0.05", "--set", 'client.lr_schedule="cosine"', "--set", "eval.federated=true"]
    rounds = {}
    engines = ("local", "pool")
    procs = fedstack_runs(tmp_path, [[*common, "--set", f"engine.name={engine}", "--set", "engine.workers=2",
                                      "--out", str(tmp_path / engine)] for engine in engines])
    for engine, proc in zip(engines, procs):
        assert proc.returncode == 0, proc.stderr
        rounds[engine] = [json.loads(line) for line in (tmp_path / engine / "metrics.jsonl").read_text().splitlines()]
    first, last = rounds["local"][0], rounds["local"][-1]
    assert last["test_accuracy"] is None and last["test_loss"] < first["test_loss"]  # no classes; it learns
    assert set(last["test_metrics"]) == {"mae", "share_within_half"} and last["test_metrics"]["mae"] > 0
    assert last["federated"]["of"] == "loss" and last["fit_metrics"]["train_loss"] == last["train_loss"]
    strip = [[{k: v for k, v in r.items() if k != "wall_time_s"} for r in rs] for rs in rounds.values()]
    assert strip[0] == strip[1]


def test_eval_results_add_up_their_sums_and_lose_accuracy_without_classes():
    from fedstack.client import EvalResult

    a = EvalResult(2.0, None, 4, None, {"abs_error": 1.0})
    b = EvalResult(1.0, None, 2, None, {"abs_error": 2.0, "other": 6.0})
    total = EvalResult() + a + b
    assert (total.loss, total.accuracy, total.top3_accuracy) == (0.5, None, None)
    assert total.metrics() == {"abs_error": 0.5, "other": 1.0}
    assert (EvalResult(1.0, 3, 4, 4) + EvalResult(1.0, 1, 4, 2)).accuracy == 0.5


def test_fit_metrics_are_example_weighted_means_of_what_clients_report():
    from fedstack.loop import mean_fit_metrics

    pairs = [({"train_loss": 1.0, "f1": 0.5}, 1), ({"train_loss": 4.0, "f1": float("nan")}, 3), ({"steps": 2}, 0)]
    assert mean_fit_metrics(pairs) == {"f1": 0.5, "steps": 2.0, "train_loss": 3.25}


def test_real_valued_targets_are_refused_where_they_cannot_go():
    from fedstack.data import FederatedDataset
    from fedstack.errors import DataError

    x, y = np.zeros((20, 2), np.float32), np.linspace(0, 1, 20)
    data = FederatedDataset.from_arrays(x, y, x[:4], y[:4], num_clients=4, targets="values")
    assert data.num_classes == 0 and data.y.dtype == np.float32 and data.y[1] == pytest.approx(1 / 19)
    with pytest.raises(ConfigError, match="data.partition"):
        FederatedDataset.from_arrays(x, y, x[:4], y[:4], num_clients=4, partition="dirichlet", targets="values")
    with pytest.raises(DataError, match="integer class labels"):
        FederatedDataset.from_arrays(x, y, x[:4], y[:4], num_clients=4)
    with pytest.raises(ConfigError, match="model.task"):
        load_config(None, ['model.task="regression"'])


def test_model_metrics_apply_to_a_built_in_model_and_are_refused_for_an_own_trainer(tmp_path, monkeypatch):
    from fedstack.plan import make_trainer

    (tmp_path / "metricpkg.py").write_text(textwrap.dedent("""
        import fedstack

        def hits(predictions, targets):
            return {"class_0_said": (predictions.argmax(1) == 0).sum()}

        class Own(fedstack.Trainer):
            pass

        def own():
            return Own()
    """))
    monkeypatch.chdir(tmp_path)
    trainer = make_trainer("logreg", (4,), 3, "sgd", metrics="metricpkg:hits")
    x, y = np.ones((5, 4), np.float32), np.zeros(5, np.int64)
    result = trainer.evaluate(np.zeros_like(trainer.get_params()), x, y)
    assert result.examples == 5 and set(result.sums) == {"class_0_said"}
    assert result.sums["class_0_said"] == 5  # zero weights: every logit ties, and argmax takes class 0
    with pytest.raises(ConfigError, match="model.metrics"):
        make_trainer("metricpkg:own", (4,), 3, "sgd", metrics="metricpkg:hits")


def test_fit_metrics_reach_the_record_per_client_and_through_the_runs_own_aggregation(tmp_path, monkeypatch):
    (tmp_path / "fitagg.py").write_text(textwrap.dedent("""
        def slowest(pairs):
            return {"max_train_loss": max(m["train_loss"] for m, _ in pairs), "clients": len(pairs)}
    """))
    monkeypatch.chdir(tmp_path)
    base = ["data.name=digits", "data.num_clients=6", "server.clients_per_round=3", "server.rounds=2",
            "model.name=logreg", "eval.federated=false"]
    plain = run_config(load_config(None, base), None).rounds
    own = run_config(load_config(None, [*base, 'eval.fit_metrics_aggregation="fitagg:slowest"']), None).rounds
    for mine, default in zip(own, plain):
        by_client = default["fit_metrics_by_client"]
        assert len(by_client) == 3 and mine["fit_metrics_by_client"] == by_client
        assert mine["fit_metrics"] == {"max_train_loss": max(m["train_loss"] for m in by_client.values()),
                                       "clients": 3}
        assert default["fit_metrics"]["train_loss"] == pytest.approx(default["train_loss"])
    with pytest.raises(ConfigError, match="eval.fit_metrics_aggregation"):
        run_config(load_config(None, [*base, 'eval.fit_metrics_aggregation="fitagg:nothing"']), None)
