"""Contribution scores in the round loop: a hand-computed round (a data-rich client and two free riders), the
same scores on the local and the pool engine, what a run writes (records, contributions.csv, summary.json's
payout, History.contributions), and the refusals by declared trait."""

import csv
import json

import numpy as np
import pytest

from fedstack.client import EvalResult, FitResult
from fedstack.codec import Pipeline
from fedstack.data import FederatedDataset
from fedstack.engine import LocalEngine, Workload
from fedstack.errors import ConfigError
from fedstack.experiment import run_config
from fedstack.loop import ContributionOptions, Evaluation, Parts, Rules, Synchronous
from fedstack.loop.contribute import validation_rows
from fedstack.plan import load_config
from fedstack.strategy import FedAvg

# Client 0 moves the model's first coordinate by 3; clients 1 and 2 send nothing (free riders); weights 1, 1, 2.
UPDATES = {0: 3.0, 1: 0.0, 2: 0.0}
WEIGHTS = {0: 1, 1: 1, 2: 2}


class FirstCoordinate:
    """A model whose utility is its first parameter: evaluate reports loss_sum = −examples · params[0], so the
    "loss" utility (−mean loss) of a coalition's model is exactly its first coordinate."""

    def fit(self, params, data, config, state=None):
        cid = int(data.train_idx[0])
        update = np.zeros_like(params)
        update[0] = UPDATES[cid]
        return FitResult(update, WEIGHTS[cid])

    def evaluate(self, params, x, y):
        return EvalResult(-float(params[0]) * len(y), None, len(y), None)


def _round(methods, coalition):
    x = np.zeros((6, 1), np.float32)
    y = np.zeros(6, np.int64)
    ds = FederatedDataset.from_arrays(x, y, x, y, num_clients=3, partition="iid", holdout=0)
    ds.train_idx = [np.array([i]) for i in range(3)]
    options = ContributionOptions(methods=methods, validation=np.arange(6), utility="loss", coalition=coalition)
    records = []
    loop = Synchronous(FedAvg(), LocalEngine(), Workload(FirstCoordinate, ds, Pipeline(), seed=0), rounds=1,
                       clients_per_round=3, rules=Rules(), evaluation=Evaluation(every=0, federated=False),
                       parts=Parts(callbacks=[lambda r, p: records.append(r)], contribution=options))
    params = loop.run(np.zeros(2, np.float32))
    return params, records[0]["contribution"]


def test_a_hand_computed_round_with_two_free_riders_whose_coalitions_average():
    # coalition "mean": v(S) = Σ w_i u_i / Σ w_i over S:
    # v(∅)=0, v(0)=3, v(1)=v(2)=v(12)=0, v(01)=1.5, v(02)=1, v(012)=0.75.
    # φ0 = 3/3 + 1.5/6 + 1/6 + 0.75/3 = 5/3; φ1 = −1.5/6 − 0.25/3 = −1/3; φ2 = −2/6 − 0.75/3 = −7/12 (sum 0.75).
    # Leave-one-out: 0.75 − 0 = 0.75; 0.75 − 1 = −0.25; 0.75 − 1.5 = −0.75. Cosine: the free riders' updates are
    # zero, and client 0's others sum to zero: 0 for all.
    params, figures = _round(("shapley", "gtg", "loo", "cosine"), "mean")
    assert params[0] == pytest.approx(0.75)
    scores = {m: [figures["methods"][m]["scores"][str(i)] for i in range(3)] for m in figures["methods"]}
    assert scores["shapley"] == pytest.approx([5 / 3, -1 / 3, -7 / 12], abs=1e-6)
    assert scores["loo"] == pytest.approx([0.75, -0.25, -0.75], abs=1e-6)
    assert scores["cosine"] == [0.0, 0.0, 0.0]
    assert sum(scores["gtg"]) == pytest.approx(0.75, abs=1e-3)  # efficient within eps
    assert figures["methods"]["shapley"]["evaluations"] == 8 and figures["methods"]["loo"]["evaluations"] == 4
    assert figures["methods"]["cosine"]["evaluations"] == 0
    assert figures["utility_before"] == pytest.approx(0.0) and figures["utility_after"] == pytest.approx(0.75)
    assert figures["clients"] == [0, 1, 2]


def test_a_hand_computed_round_with_two_free_riders_who_add_their_share():
    # coalition "share": v(S) = Σ_{i∈S} w_i u_i / Σ_{i∈N} w_i = 3/4 if 0 ∈ S else 0: the free riders are null players.
    params, figures = _round(("shapley", "gtg", "loo", "cosine"), "share")
    assert params[0] == pytest.approx(0.75)  # the round itself does not change
    scores = {m: [figures["methods"][m]["scores"][str(i)] for i in range(3)] for m in figures["methods"]}
    assert scores["shapley"] == pytest.approx([0.75, 0.0, 0.0], abs=1e-6)
    assert scores["gtg"] == pytest.approx([0.75, 0.0, 0.0], abs=1e-3)
    assert scores["loo"] == pytest.approx([0.75, 0.0, 0.0], abs=1e-6)


DIGITS = ["data.name=digits", "data.num_clients=8", "server.rounds=3", "server.clients_per_round=5",
          "eval.federated=false", "eval.every=0", 'contribution.method=["gtg", "shapley", "loo", "cosine"]',
          "contribution.validation_examples=300", "contribution.payout=100"]


def _without_seconds(rounds):
    rows = json.loads(json.dumps(rounds))
    for row in rows:
        row.pop("wall_time_s")
        for figures in row["contribution"]["methods"].values():
            figures.pop("seconds")
    return rows


def test_scores_are_the_same_on_local_and_pool_and_a_run_keeps_them(tmp_path):
    histories = {}
    for engine in ("local", "pool"):
        histories[engine] = run_config(load_config(None, [*DIGITS, f"engine.name={engine}", "engine.workers=2"]),
                                       tmp_path / engine)
    local, pool = histories["local"], histories["pool"]
    assert np.array_equal(local.params, pool.params)
    assert _without_seconds(local.rounds) == _without_seconds(pool.rounds)

    for r in local.rounds:  # Shapley values split exactly the round's change of utility
        c = r["contribution"]
        assert sum(c["methods"]["shapley"]["scores"].values()) == \
            pytest.approx(c["utility_after"] - c["utility_before"], abs=1e-9)
        assert c["methods"]["shapley"]["evaluations"] == 2 ** 5
    summary = json.loads((tmp_path / "local" / "summary.json").read_text())["contribution"]
    totals = local.contributions()  # the first method listed: gtg
    assert totals == local.contributions("gtg") and set(summary["accumulated"]) == {"gtg", "shapley", "loo", "cosine"}
    assert summary["accumulated"]["gtg"] == {str(c): v for c, v in totals.items()}
    shares = summary["payout"]["shares"]
    assert summary["payout"]["method"] == "gtg" and sum(shares.values()) == pytest.approx(100)
    assert all((shares[str(c)] > 0) == (v > 0) for c, v in totals.items())
    with open(tmp_path / "local" / "contributions.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(row["client"]) for row in rows] == sorted(totals)
    assert sum(int(row["rounds"]) for row in rows) == 3 * 5
    assert [float(row["gtg"]) for row in rows] == pytest.approx([totals[c] for c in sorted(totals)], rel=1e-5)
    with pytest.raises(Exception, match="no 'banzhaf' contribution scores"):
        local.contributions("banzhaf")


@pytest.mark.parametrize("overrides, why", [
    (['codec.pipeline=["clip", "secagg"]'], "give the server only the sum"),
    (["server.strategy=fedbuff", "server.buffer_size=2", "server.concurrency=4"], "no rounds of updates"),
    (["server.strategy=ifca"], "no one global model"),
])
def test_scores_need_each_update_of_one_model(tmp_path, overrides, why):
    config = load_config(None, [*DIGITS[:5], "contribution.method=loo", *overrides])
    with pytest.raises(ConfigError, match=why) as caught:
        run_config(config, tmp_path / "run")
    assert caught.value.key == "contribution.method"


def test_bad_contribution_settings_name_their_key():
    with pytest.raises(ConfigError, match="contribution.method"):
        load_config(None, ['contribution.method=["banzhaf"]'])
    with pytest.raises(ConfigError, match="contribution.method"):
        load_config(None, ["decentralized.topology=ring", "contribution.method=loo"])
    with pytest.raises(ConfigError, match="contribution.validation_examples"):
        validation_rows(100, 101, seed=0)
