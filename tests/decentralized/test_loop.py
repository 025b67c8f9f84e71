import functools
import json
import logging
from dataclasses import replace

import numpy as np
import pytest

from fedstack.client import FitConfig
from fedstack.codec import CodecContext, Pipeline, build_pipeline
from fedstack.plan import load_config
from fedstack.decentralized import Gossip, GossipOptions, complete, ring
from fedstack.decentralized.schedule import compress
from fedstack.loop import Evaluation, Parts
from fedstack.strategy import FedAvg
from fedstack.engine import LocalEngine, Workload
from fedstack.errors import ConfigError
from fedstack.experiment import run_config
from fedstack.plan import dataset_of, initial_params, make_trainer
from fedstack.seeding import int_seed

SMALL = ["data.name=digits", "model.name=logreg", "data.num_clients=8", "server.clients_per_round=8",
         "server.rounds=3", "engine.name=local", "seed=3", "decentralized.topology=ring"]
KEYS = {"round", "test_accuracy", "test_loss", "node_accuracy_mean", "consensus_distance", "bytes_per_node",
        "bytes_up", "bytes_down", "clients", "failures", "wall_time_s", "sim_time_s"}


@pytest.fixture(scope="module")
def ring_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ring")
    return out, run_config(load_config(None, SMALL), out)


def test_a_ring_run_records_every_round_and_learns(ring_run):
    out, history = ring_run
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [1, 2, 3]
    for r in records:
        assert KEYS <= set(r)
        assert r["clients"] == 8 and r["failures"] == 0
        assert np.isfinite(r["consensus_distance"]) and r["consensus_distance"] > 0
        assert r["bytes_down"] == r["bytes_up"] == 8 * r["bytes_per_node"]
    P = history.params.size
    assert records[0]["bytes_per_node"] == 2 * 4 * P  # a raw float32 model to each of two neighbours
    assert records[-1]["test_accuracy"] > records[0]["test_accuracy"]
    assert records[-1]["test_accuracy"] > 0.5
    assert 0 < records[-1]["node_accuracy_mean"] <= 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["decentralized"]["algorithm"] == "d-psgd"
    assert summary["decentralized"]["edges"] == 8 and summary["decentralized"]["spectral_gap"] > 0
    assert summary["final"]["test_accuracy"] == records[-1]["test_accuracy"]
    assert (out / "report.png").exists() and (out / "config.toml").exists()


def test_local_and_pool_engines_give_the_same_bits(ring_run, tmp_path):
    _, local = ring_run
    pool = run_config(load_config(None, [*SMALL, "engine.name=pool", "engine.workers=2"]), tmp_path)
    assert np.array_equal(local.params, pool.params)
    drop = {"wall_time_s"}
    assert [{k: v for k, v in r.items() if k not in drop} for r in local.rounds] == \
           [{k: v for k, v in r.items() if k not in drop} for r in pool.rounds]


def test_node_failures_and_compressed_gossip(tmp_path):
    config = load_config(None, [*SMALL, "decentralized.topology=torus", "decentralized.node_failure=0.3",
                                "decentralized.choco=true", 'codec.pipeline=["qsgd"]', "codec.bits=4"])
    history = run_config(config, tmp_path)
    assert len(history.rounds) == 3
    assert any(r["failures"] > 0 for r in history.rounds)
    for r in history.rounds:
        assert r["clients"] + r["failures"] == 8
        assert 0 < r["bytes_up"] < r["bytes_up_raw"] / 4  # 4-bit codes instead of float32
        assert np.isfinite(r["test_accuracy"]) and np.isfinite(r["consensus_distance"])
    again = run_config(config, tmp_path / "again")  # failures and codec randomness come from the seed
    assert np.array_equal(history.params, again.params)
    assert [r["failures"] for r in history.rounds] == [r["failures"] for r in again.rounds]


def setup(n: int, seed: int = 3):
    config = load_config(None, [*SMALL, f"data.num_clients={n}", f"server.clients_per_round={n}"])
    dataset = dataset_of(config)
    factory = functools.partial(make_trainer, "logreg", tuple(dataset.x.shape[1:]), dataset.num_classes, "sgd")
    return dataset, factory, initial_params(factory, seed)


def test_one_round_on_a_complete_graph_is_the_plain_average_of_the_local_models():
    n, seed = 6, 3
    dataset, factory, x0 = setup(n, seed)
    fit = FitConfig(epochs=1, batch_size=16, lr=0.1)
    loop = Gossip(FedAvg(fit), LocalEngine(), Workload(factory, dataset, Pipeline(), seed), rounds=1,
                  gossip=GossipOptions(complete(n)), evaluation=Evaluation(federated=False))
    X = loop.run(x0)
    trainer = factory()
    local = [x0 + trainer.fit(x0, dataset.client(i), replace(fit, seed=int_seed(seed, "client", 1, i))).update
             for i in range(n)]
    expected = np.mean(np.array(local, np.float64), axis=0)
    assert np.abs(X - expected).max() < 1e-6
    assert np.abs(X - X[0]).max() < 1e-6  # consensus after one step


class FailingTrainer:
    """A real trainer that raises for one node's task in round 1 (recognised by its batch seed)."""

    def __init__(self, factory, bad_seed):
        self.inner, self.bad_seed = factory(), bad_seed

    def fit(self, params, data, config, state=None):
        if config.seed == self.bad_seed:
            raise RuntimeError("disk full")
        return self.inner.fit(params, data, config, state)

    def evaluate(self, params, x, y):
        return self.inner.evaluate(params, x, y)


def test_a_node_that_raises_is_silent_for_the_round(caplog):
    n, seed = 6, 3
    dataset, factory, x0 = setup(n, seed)
    records = []
    bad = functools.partial(FailingTrainer, factory, int_seed(seed, "client", 1, 2))
    loop = Gossip(FedAvg(FitConfig(batch_size=16)), LocalEngine(), Workload(bad, dataset, Pipeline(), seed), rounds=1,
                  gossip=GossipOptions(ring(n)), evaluation=Evaluation(federated=False),
                  parts=Parts(callbacks=[lambda record, xbar: records.append(record)]))
    with caplog.at_level(logging.WARNING, logger="fedstack.decentralized"):
        X = loop.run(x0)
    assert records[0]["failures"] == 1 and records[0]["clients"] == n - 1
    assert np.array_equal(X[2], x0)  # it neither trained nor mixed
    assert not np.array_equal(X[1], x0)
    assert records[0]["bytes_up"] == 4 * x0.size * (2 * n - 4)  # nodes 1 and 3 lost a live neighbour
    assert "node 2 is silent" in caplog.text and "disk full" in caplog.text


@pytest.mark.parametrize("overrides, key", [
    (["decentralized.topology=erdos_renyi", "decentralized.p=0.01"], "decentralized.topology"),
    (["decentralized.topology=random_regular", "decentralized.degree=3", "data.num_clients=7",
      "server.clients_per_round=7"], "decentralized.degree"),
    (['codec.pipeline=["qsgd"]'], "codec.pipeline"),
    (["server.strategy=scaffold"], "server.strategy"),
])
def test_bad_decentralized_configs_fail_before_training(tmp_path, overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        run_config(load_config(None, [*SMALL, *overrides]), tmp_path)
    assert not (tmp_path / "metrics.jsonl").exists()


def test_compress_runs_error_feedback_codecs_without_their_state():
    config = load_config(None, ['codec.pipeline=["topk", "zstd"]', "codec.topk_fraction=0.1"])
    pipeline = build_pipeline(config.codec.pipeline, config.codec)
    v = np.random.default_rng(0).normal(size=1000).astype(np.float32)
    ctx = CodecContext(1, 0, 0)
    payload = compress(pipeline, v, ctx)
    q = pipeline.decode(payload, ctx)
    assert np.count_nonzero(q) == 100 and len(payload) < 4 * 1000 / 4
    kept = np.flatnonzero(q)
    assert np.array_equal(q[kept], v[kept])  # the largest values, sent as they are
    assert np.abs(v[kept]).min() >= np.abs(np.delete(v, kept)).max()
