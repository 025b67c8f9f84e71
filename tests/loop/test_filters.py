import logging

import numpy as np
import pytest

from fedstack.attack import Attack
from fedstack.client import EvalResult, FitConfig, FitResult
from fedstack.codec import Pipeline
from fedstack.data import FederatedDataset
from fedstack.engine import LocalEngine, Outcome, Workload
from fedstack.engine.base import FitReply
from fedstack.errors import ConfigError
from fedstack.report import plot_report, rejections_per_round, summary_table
from fedstack.loop import REJECT_REASONS, Asynchronous, Evaluation, Parts, Rules, Synchronous, Tally
from fedstack.validation import update_problem
from fedstack.strategy import FedAsync, FedAvg, Task
from fedstack.strategy.robust import Robust


def test_update_problem_names_each_reason():
    good = np.zeros(3, np.float32)
    assert update_problem(good, 3, 1) is None
    assert update_problem(np.zeros(4, np.float32), 3, 1)[0] == "shape"
    assert update_problem([0.0, 0.0, 0.0], 3, 1)[0] == "shape"
    assert update_problem(np.zeros(3, np.float64), 3, 1)[0] == "dtype"
    assert update_problem(np.array([0, np.inf, 0], np.float32), 3, 1)[0] == "non_finite"
    assert update_problem(good, 3, -1)[0] == "weight"


class ScriptedTrainer:
    """Client i sends all i's with weight 1, except: 1 NaN, 2 the wrong size, 3 a negative weight, 4 ×1000."""

    def fit(self, params, data, config, state=None):
        cid = int(data.train_idx[0])
        value = {1: np.nan, 4: 4000.0}.get(cid, float(cid))
        size = params.size + (cid == 2)
        return FitResult(np.full(size, value, np.float32), -1 if cid == 3 else 1)

    def evaluate(self, params, x, y):
        return EvalResult(0.0, 0, len(y))


def _workload(n):
    x = np.zeros((n, 1), np.float32)
    y = np.zeros(n, np.int64)
    ds = FederatedDataset.from_arrays(x, y, x, y, num_clients=n, partition="iid", holdout=0)
    ds.train_idx = [np.array([i]) for i in range(n)]  # client i holds sample i
    return Workload(ScriptedTrainer, ds, Pipeline(), seed=0)


def _server(strategy, records, n=8, rounds=2, max_norm_ratio=0.0, attack=None):
    return Synchronous(strategy, LocalEngine(), _workload(n), rounds=rounds, clients_per_round=n,
                       rules=Rules(max_norm_ratio=max_norm_ratio), evaluation=Evaluation(federated=False),
                       parts=Parts(attack=attack, callbacks=[lambda r, p: records.append(r)]))


def test_each_rejection_is_counted_by_reason_logged_and_the_server_keeps_serving(caplog):
    records = []
    with caplog.at_level(logging.WARNING, logger="fedstack.server"):
        params = _server(FedAvg(), records, max_norm_ratio=10).run(np.zeros(2, np.float32))
    # accepted: clients 0, 5, 6, 7 (mean 4.5); 1 NaN, 2 shape, 3 weight, 4 norm 4000·√2 > 10 × the median
    assert [r["round"] for r in records] == [1, 2]
    for r in records:
        assert r["clients"] == 4 and r["failures_by_kind"]["rejected"] == 4
        assert r["rejected_by_reason"] == {**dict.fromkeys(REJECT_REASONS, 0), "shape": 1, "non_finite": 1,
                                           "weight": 1, "norm": 1}
    np.testing.assert_allclose(params, [9, 9])
    assert caplog.text.count("(norm)") == 2 and "negative num_examples" in caplog.text


def test_without_the_norm_bound_the_large_update_is_aggregated():
    records = []
    params = _server(FedAvg(), records, rounds=1).run(np.zeros(2, np.float32))
    np.testing.assert_allclose(params, [(0 + 4000 + 5 + 6 + 7) / 5] * 2)
    assert records[0]["rejected_by_reason"]["norm"] == 0


def test_an_undecodable_payload_is_its_own_reason():
    server = _server(FedAvg(), [])
    tally = Tally()
    outcome = Outcome(Task(1, 0, FitConfig()), FitReply(b"abc", 1))
    assert server.filters.accept(outcome, 2, tally) is None
    assert tally.rejected_by_reason["undecodable"] == 1 and tally.failures_by_kind["rejected"] == 1


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")  # the attacker boosts past float32 on purpose
def test_an_attackers_update_is_validated_like_any_and_the_robust_rule_sees_the_rest():
    records = []
    attack = Attack("scale", frozenset({6}), 10, scale=1e39)  # boosted past float32: inf
    strategy = Robust(FedAvg(), "median", capacity=8)
    _server(strategy, records, rounds=1, attack=attack).run(np.zeros(2, np.float32))
    assert records[0]["rejected_by_reason"]["non_finite"] == 2  # client 1's NaN and the attacker's inf
    assert records[0]["clients"] == 4 and records[0]["aggregate_s"] >= 0


def test_secure_aggregation_hides_norms_from_the_server():
    from fedstack.codec import CodecOptions, build_pipeline

    workload = _workload(4)
    workload.pipeline = build_pipeline(["clip", "secagg"], CodecOptions())
    with pytest.raises(ConfigError, match="server.max_norm_ratio"):
        Synchronous(FedAvg(), LocalEngine(), workload, rounds=1, clients_per_round=4, rules=Rules(max_norm_ratio=3))


def test_the_asynchronous_loop_uses_the_same_checks():
    records = []
    server = Asynchronous(FedAsync(FitConfig(), alpha=0.5), LocalEngine(), _workload(8), rounds=12,
                          clients_per_round=4, rules=Rules(concurrency=4, max_norm_ratio=10),
                          evaluation=Evaluation(every=0, federated=False),
                          parts=Parts(callbacks=[lambda r, p: records.append(r)]))
    params = server.run(np.zeros(2, np.float32))
    totals = {reason: sum(r["rejected_by_reason"][reason] for r in records) for reason in REJECT_REASONS}
    assert totals["non_finite"] and totals["shape"] and totals["weight"]
    assert sum(totals.values()) == sum(r["failures_by_kind"]["rejected"] for r in records) == server.rejected
    assert np.isfinite(params).all()
    with pytest.raises(ConfigError, match="attack.name"):
        Asynchronous(FedAsync(FitConfig()), LocalEngine(), _workload(8), rounds=1, clients_per_round=4,
                     parts=Parts(attack=Attack("alie", frozenset({1}), 10)))


def test_the_report_shows_rejections_per_round(tmp_path):
    import json

    metrics = [{"round": 1, "test_accuracy": 0.5, "test_loss": 1.0, "bytes_up": 1, "bytes_down": 1,
                "rejected_by_reason": {"norm": 2, "shape": 0}},
               {"round": 2, "test_accuracy": 0.6, "test_loss": 0.9, "bytes_up": 1, "bytes_down": 1,
                "rejected_by_reason": {"norm": 0, "shape": 1}}]
    assert rejections_per_round(metrics) == {"norm": [2, 0], "shape": [0, 1]}
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    assert plot_report(tmp_path).exists()
    from rich.console import Console

    console = Console(record=True, width=120)
    console.print(summary_table({"final": {}}, metrics))
    text = console.export_text()
    assert "3 (norm 2, shape 1)" in text and "r1:2 r2:1" in text
