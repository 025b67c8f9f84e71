import json

import numpy as np
import pytest

from fedstack import cli
from fedstack.engine import EvalTask, LocalEngine
from fedstack.profiling import Profile, ProfiledEngine
from fedstack.report import profile_rows
from fedstack.strategy import Task
from fedstack.client import FitConfig

from engine.test_engines import _workload


def test_idle_is_the_workers_capacity_left_over():
    p = Profile(workers=2, wall_s=10.0, train_s=12.0, encode_s=1.0, evaluate_s=3.0)
    assert p.idle_s == pytest.approx(4.0)
    later = Profile(workers=2, wall_s=15.0, train_s=20.0, encode_s=1.5, evaluate_s=3.0, decode_s=0.25)
    round_ = later.since(p)
    assert (round_.wall_s, round_.train_s, round_.encode_s, round_.decode_s) == (5.0, 8.0, 0.5, 0.25)
    assert round_.workers == 2 and round_.idle_s == pytest.approx(1.5)
    assert later.summary()["idle_s"] == pytest.approx(30 - 24.5)


def test_the_engine_books_training_and_evaluation_apart():
    profile = Profile()
    engine = ProfiledEngine(LocalEngine(), profile)
    engine.start(_workload())
    outcomes = list(engine.run(np.zeros(4, np.float32), [Task(1, 0, FitConfig()), Task(1, 1, FitConfig()),
                                                          EvalTask(0, 2)]))
    engine.close()
    fits = sum(o.seconds for o in outcomes[:2])
    assert profile.workers == 1
    assert profile.train_s + profile.encode_s == pytest.approx(fits, rel=0.05)
    assert profile.train_s >= 0.6  # SlowTrainer sleeps 0.3 s per fit
    assert profile.evaluate_s == pytest.approx(outcomes[2].seconds)
    assert profile.wait_s >= fits  # the local engine computes while its consumer waits


def test_run_profile_writes_where_the_time_went(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["run", "--profile", "--quiet", "--out", str(out), "--set", "data.name=digits", "--set",
            "data.num_clients=10", "--set", "model.name=mlp", "--set", "server.clients_per_round=3",
            "--set", "server.rounds=2", "--set", "engine.name=local"]
    assert cli.main(args) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    total = summary["profile"]
    assert total["wall_s"] == pytest.approx(records[-1]["wall_time_s"], abs=1e-3)
    for key in ("train_s", "evaluate_s", "wait_s", "aggregate_s", "evaluate_wall_s"):
        assert total[key] > 0, key
        assert total[key] == pytest.approx(sum(r["profile"][key] for r in records), abs=0.01), key
    assert total["train_s"] + total["encode_s"] + total["evaluate_s"] <= total["wall_s"]
    printed = capsys.readouterr().out
    assert "workers (1): training" in printed and "server: aggregation" in printed


def test_no_profile_no_rows(tmp_path):
    assert profile_rows(None) == []
    rows = dict(profile_rows(Profile(workers=2, wall_s=4.0, train_s=6.0).summary()))
    assert rows["workers (2): training"] == "6.0 s (75%)"
    assert rows["workers (2): idle (start-up, transport, imbalance)"] == "2.0 s (25%)"
