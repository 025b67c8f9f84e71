"""Callbacks: the loop calls on_start once the engine has started, on_round per round in order, on_end once
with how the run ended — and plain functions of (record, params) still work."""

import numpy as np
import pytest

from fedstack.client import EvalResult, FitResult
from fedstack.codec import Pipeline
from fedstack.data import FederatedDataset
from fedstack.engine import LocalEngine, Workload
from fedstack.loop import Callback, Evaluation, Parts, Rules, Synchronous
from fedstack.strategy import FedAvg


class Ones:
    def fit(self, params, data, config, state=None):
        return FitResult(np.ones_like(params), 1)

    def evaluate(self, params, x, y):
        return EvalResult(0.0, 0, len(y))


class Journal(Callback):
    """Writes down every hook call; raises in a round if told to."""

    def __init__(self, engine, fail_at=None, interrupt_at=None):
        self.engine, self.fail_at, self.interrupt_at, self.calls = engine, fail_at, interrupt_at, []

    def on_start(self, rounds, start_round):
        self.calls.append(("start", rounds, start_round, self.engine.started))

    def on_round(self, record, params):
        self.calls.append(("round", record["round"]))
        if record["round"] == self.fail_at:
            raise RuntimeError("disk on fire")
        if record["round"] == self.interrupt_at:
            raise KeyboardInterrupt

    def on_end(self, status):
        self.calls.append(("end", status))

    def on_results(self, run_dir):
        self.calls.append(("results", sorted(p.name for p in run_dir.iterdir() if p.suffix in (".json", ".png"))))


class WatchedEngine(LocalEngine):
    started = False

    def start(self, workload):
        super().start(workload)
        self.started = True


def _loop(callbacks, engine, rounds=3):
    x = np.zeros((4, 1), np.float32)
    y = np.zeros(4, np.int64)
    ds = FederatedDataset.from_arrays(x, y, x, y, num_clients=4, partition="iid", holdout=0)
    return Synchronous(FedAvg(), engine, Workload(Ones, ds, Pipeline(), seed=0), rounds=rounds,
                       clients_per_round=2, rules=Rules(), evaluation=Evaluation(every=0, federated=False),
                       parts=Parts(callbacks=callbacks))


def test_hooks_in_order_after_the_engine_started_and_plain_functions_too():
    engine = WatchedEngine()
    journal, seen = Journal(engine), []
    _loop([journal, lambda record, params: seen.append(record["round"])], engine).run(np.zeros(2, np.float32), 2)
    assert journal.calls == [("start", 3, 2, True), ("round", 2), ("round", 3), ("end", "finished")]
    assert seen == [2, 3]


@pytest.mark.parametrize("where, status, error", [("fail_at", "failed", RuntimeError),
                                                  ("interrupt_at", "interrupted", KeyboardInterrupt)])
def test_on_end_says_how_a_broken_run_ended(where, status, error):
    engine = WatchedEngine()
    journal = Journal(engine, **{where: 2})
    with pytest.raises(error):
        _loop([journal], engine).run(np.zeros(2, np.float32))
    assert journal.calls[-2:] == [("round", 2), ("end", status)]


def test_on_results_comes_once_the_runs_files_are_written_and_a_failing_tracker_is_one_warning(tmp_path, caplog):
    from fedstack.experiment import simulate
    from fedstack.tracking import Failsafe

    engine = WatchedEngine()
    journal, broken = Journal(engine), Failsafe(Journal(engine, fail_at=1), "the broken tracker")
    x = np.zeros((4, 1), np.float32)
    ds = FederatedDataset.from_arrays(x, np.zeros(4, np.int64), x, np.zeros(4, np.int64), num_clients=4,
                                      partition="iid", holdout=0)
    with caplog.at_level("WARNING", logger="fedstack.tracking"):
        history = simulate(Ones, ds, np.zeros(2, np.float32), rounds=3, clients_per_round=2, engine=engine,
                           out=tmp_path / "run", evaluation=Evaluation(every=0, federated=False),
                           parts=Parts(callbacks=[broken, journal]))
    assert [r["round"] for r in history.rounds] == [1, 2, 3]
    assert journal.calls[-2:] == [("end", "finished"), ("results", ["report.png", "summary.json"])]
    # the broken one failed in round 1, said so once, and was left out after
    assert broken.tracker.calls == [("start", 3, 1, True), ("round", 1)] and broken.failed == "disk on fire"
    assert [r.getMessage() for r in caplog.records] == ["the broken tracker failed, the run goes on without it: "
                                                        "disk on fire"]
