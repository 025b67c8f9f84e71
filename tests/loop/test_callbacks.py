"""Callbacks: the loop calls on_start once the engine has started, on_round per round in order, on_end once
with how the run ended — and plain functions of (record, params) still work."""

import json

import numpy as np
import pytest

from fedstack.client import EvalResult, FitResult
from fedstack.codec import Pipeline
from fedstack.data import FederatedDataset
from fedstack.engine import LocalEngine, Workload
from fedstack.loop import Callback, Evaluation, Parts, Rules, Synchronous
from fedstack.strategy import FedAvg
from fedstack.tracking import Failsafe, Tracker


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


class FileJournal(Tracker):
    """A tracker that writes each hook down in a file (it runs in a process of its own); raises in a round if
    told to."""

    def __init__(self, path, fail_at=None):
        self.path, self.fail_at = path, fail_at

    def _note(self, *entry):
        with open(self.path, "a") as file:
            file.write(json.dumps(entry) + "\n")

    def prepare(self):
        self._note("prepare")

    def on_start(self, rounds, start_round):
        self._note("start", rounds, start_round)

    def on_round(self, record, params):
        self._note("round", record["round"], params is None)
        if record["round"] == self.fail_at:
            raise RuntimeError("disk on fire")

    def on_end(self, status):
        self._note("end", status)

    def on_results(self, run_dir):
        self._note("results", sorted(p.name for p in run_dir.iterdir() if p.suffix in (".json", ".png")))

    def notes(self):
        return [json.loads(line) for line in open(self.path)]


def test_on_results_comes_once_the_runs_files_are_written_and_a_failing_tracker_is_one_warning(tmp_path, caplog):
    from fedstack.experiment import simulate

    engine = WatchedEngine()
    journal = Journal(engine)
    good = Failsafe(FileJournal(tmp_path / "good.jsonl"), "the good tracker")
    broken = Failsafe(FileJournal(tmp_path / "broken.jsonl", fail_at=1), "the broken tracker")
    x = np.zeros((4, 1), np.float32)
    ds = FederatedDataset.from_arrays(x, np.zeros(4, np.int64), x, np.zeros(4, np.int64), num_clients=4,
                                      partition="iid", holdout=0)
    with caplog.at_level("WARNING", logger="fedstack.tracking"):
        history = simulate(Ones, ds, np.zeros(2, np.float32), rounds=3, clients_per_round=2, engine=engine,
                           out=tmp_path / "run", evaluation=Evaluation(every=0, federated=False),
                           parts=Parts(callbacks=[broken, good, journal]))
    assert [r["round"] for r in history.rounds] == [1, 2, 3]
    assert journal.calls[-2:] == [("end", "finished"), ("results", ["report.png", "summary.json"])]
    # in its own process, each hook in order, the model not sent (it does not read it)
    assert FileJournal(tmp_path / "good.jsonl").notes() == [
        ["prepare"], ["start", 3, 1], ["round", 1, True], ["round", 2, True], ["round", 3, True],
        ["end", "finished"], ["results", ["report.png", "summary.json"]]]
    # the broken one failed in round 1, said so once, and was left out after
    assert FileJournal(tmp_path / "broken.jsonl").notes() == [["prepare"], ["start", 3, 1], ["round", 1, True]]
    assert broken.failed == "disk on fire" and good.failed is None
    assert [r.getMessage() for r in caplog.records] == ["the broken tracker failed, the run goes on without it: "
                                                        "disk on fire"]
