"""The decentralized round loop: every node trains on its own data, then gossips with its neighbours.

No server: node i holds client i's data and its own model, row i of the stacked models X [n, P].
Each round (`Decentralized.round`):

1. silent nodes are drawn: each node fails with probability `node_failure`, from the "systems"
   stream of the run seed keyed by (stable_hash("node_failure"), round) (`failure_rng`);
2. every live node trains locally from its own model: one Task per node whose `span` is its row of
   the stacked vector, so the engine (local or pool) trains all nodes of a round in parallel; batch
   order from `int_seed(seed, "client", round, i)` as in the server's rounds. A node whose training
   raises, or whose update is malformed, is silent for this round (a warning in the log);
3. live nodes gossip (adapt, then combine):
   - D-PSGD (Lian et al. 2017): X ← W' X, each live node sending its raw float32 model (4·P bytes)
     to each live neighbour;
   - CHOCO-SGD (Koloskova et al. 2019, Algorithm 1): compressed differences to public copies x̂,
     with `codec.pipeline` as the compressor Q; a message is its encoded payload.

   W' = `live_weights(W, alive)`: a silent node neither sends nor mixes, and its neighbours move the
   weight they would give it onto their own model. In CHOCO-SGD a silent node still *receives*
   (its inbox takes the q_j its live neighbours send), so every copy of a public model x̂_j stays the
   same on every node; a live node's message therefore goes to all of its neighbours and is counted
   for each. x̂ starts at the initial model, which every node knows from the seed without talking.

Reported per round: test figures of the average model x̄ (central test set, in shards, every
`eval_every` rounds and the last); `node_accuracy_mean`, the mean over nodes of each node's own model
on the **first 2000 test examples only** (to keep n evaluations cheap), on the same schedule;
`consensus_distance` = mean_i ‖x_i − x̄‖² after gossip; bytes sent (`bytes_up` in total, `bytes_down`
the same bytes received, `bytes_per_node` per live node); live nodes (`clients`) and silent ones
(`failures`). With federated evaluation, each node's own model is also judged on its own held-out
split (`federated`), and after fine-tuning with `finetune` (`personalized`).

A decentralized run keeps no store: running again into the same directory starts from round 1.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np

from .. import evaluation
from ..client import FitConfig
from ..codec import CodecContext, Pipeline, build_pipeline
from ..config import Config, to_toml
from ..engine import Engine, Workload, make_engine
from ..errors import ConfigError
from ..report import MetricsWriter, write_report, write_summary
from ..seeding import int_seed, rng, stable_hash
from ..validation import check_update
from ..client import Task
from .gossip import average, choco_gossip, consensus_distance, live_weights, mix
from .topology import build_topology, metropolis_hastings, spectral_gap

log = logging.getLogger("fedstack.decentralized")

# Each node's own model is evaluated on this many test examples (the first ones).
NODE_EVAL_EXAMPLES = 2000


def failure_rng(seed: int, rnd: int) -> np.random.Generator:
    """Who is silent in round `rnd`: stream "systems", keys (stable_hash("node_failure"), round)."""
    return rng(seed, "systems", stable_hash("node_failure"), rnd)


def compress(pipeline: Pipeline, vector: np.ndarray, ctx: CodecContext) -> bytes:
    """The payload `pipeline` makes of `vector`, stateless.

    A stage with error feedback (`stateful`) starts from no residual and its new residual is dropped:
    CHOCO-SGD's public copies x̂ are its memory of what was not sent.
    """
    return pipeline.encode_with_state(vector, ctx, None)[0]


class Decentralized:
    """Runs `rounds` rounds of decentralized training of the nodes of `adjacency` over `engine`.

    `workload.pipeline` encodes each node's local update for the trip back from the engine (use
    `Pipeline()`: raw float32); `pipeline` is CHOCO-SGD's compressor (`choco=True`). After each round
    every `on_round(record, x̄)` is called. `run` returns the final stacked models [n, P].
    """

    def __init__(self, engine: Engine, workload: Workload, adjacency: np.ndarray, *, rounds: int, fit: FitConfig,
                 choco: bool = False, gamma: float = 0.5, pipeline: Pipeline | None = None,
                 node_failure: float = 0.0, eval_every: int = 1, test_shard: int = 1000,
                 federated_eval_every: int | None = 0, finetune: FitConfig | None = None,
                 on_round: list[Callable] = ()):
        self.engine = engine
        self.workload = workload
        self.adjacency = np.asarray(adjacency, dtype=bool)
        self.W = metropolis_hastings(self.adjacency)
        self.n = len(self.adjacency)
        if self.n != workload.dataset.num_clients:
            raise ValueError(f"{self.n} nodes in the topology, {workload.dataset.num_clients} clients in the data")
        self.rounds = rounds
        self.fit = fit
        self.choco = choco
        self.gamma = gamma
        self.pipeline = pipeline or Pipeline()
        self.node_failure = node_failure
        self.eval_every = eval_every
        self.test_shard = test_shard
        self.federated_eval_every = federated_eval_every
        self.finetune = finetune
        self.on_round = list(on_round)

    def run(self, params: np.ndarray) -> np.ndarray:
        """Train every node from the same `params`; returns the stacked final models [n, P]."""
        params = np.ascontiguousarray(params, dtype=np.float32)
        X = np.tile(params, (self.n, 1))
        X_hat = X.copy() if self.choco else None
        started = time.perf_counter()
        try:
            self.engine.start(self.workload)
            for rnd in range(1, self.rounds + 1):
                record = self.round(rnd, X, X_hat)
                xbar = average(X)
                record["consensus_distance"] = consensus_distance(X)
                record.update(self.evaluate(rnd, X, xbar))
                record["wall_time_s"] = time.perf_counter() - started
                record["sim_time_s"] = 0.0
                for callback in self.on_round:
                    callback(record, xbar)
        finally:
            self.engine.close()
        return X

    def alive(self, rnd: int) -> np.ndarray:
        """The nodes that are not silent in round `rnd` (deterministic in seed and round)."""
        if self.node_failure <= 0:
            return np.ones(self.n, dtype=bool)
        return failure_rng(self.workload.seed, rnd).random(self.n) >= self.node_failure

    def round(self, rnd: int, X: np.ndarray, X_hat: np.ndarray | None) -> dict:
        """Local training of the live nodes, then one gossip step; X (and X_hat) change in place."""
        seed, P = self.workload.seed, X.shape[1]
        alive = self.alive(rnd)
        tasks = [Task(rnd, int(i), replace(self.fit, seed=int_seed(seed, "client", rnd, int(i))),
                      span=(int(i) * P, (int(i) + 1) * P)) for i in np.flatnonzero(alive)]
        # Each task reads only its own row, and a row changes only once its task is done.
        for outcome in self.engine.run(X.reshape(-1), tasks):
            i = outcome.task.client_id
            if outcome.error is not None:
                problem = outcome.error
            else:
                reply = outcome.value
                try:
                    update = self.workload.pipeline.decode(reply.payload, CodecContext(rnd, i, seed))
                    problem = check_update(update, P, reply.num_examples)
                except Exception as exc:  # an undecodable payload is the node's fault, not the round's
                    problem = f"undecodable payload ({exc})"
            if problem:
                alive[i] = False
                log.warning("round %d: node %d is silent this round: %s", rnd, i, problem)
                continue
            X[i] += update
        live_degree = (self.adjacency & alive[None, :]).sum(axis=1)
        if self.choco:
            sizes = np.zeros(self.n, dtype=np.int64)

            def Q(v: np.ndarray, i: int) -> np.ndarray:
                ctx = CodecContext(rnd, i, seed)
                payload = compress(self.pipeline, v, ctx)
                sizes[i] = len(payload)
                return self.pipeline.decode(payload, ctx)

            choco_gossip(X, X_hat, self.W, self.gamma, Q, alive)
            receivers = self.adjacency.sum(axis=1)  # silent neighbours receive too (see the module docs)
            sent, messages = int((sizes * receivers)[alive].sum()), int(receivers[alive].sum())
        else:
            X[...] = mix(X, live_weights(self.W, alive))
            messages = int(live_degree[alive].sum())
            sent = 4 * P * messages
        live = int(alive.sum())
        raw = 4 * P * messages  # the same messages as raw float32 models
        return {"round": rnd, "clients": live, "failures": self.n - live, "bytes_up": sent, "bytes_down": sent,
                "bytes_up_raw": raw, "bytes_down_raw": raw, "bytes_per_node": sent / live if live else 0.0}

    def evaluate(self, rnd: int, X: np.ndarray, xbar: np.ndarray) -> dict:
        """x̄ on the test set, each node on the first test examples, and each node on its held-out split."""
        figures: dict = {"test_accuracy": None, "test_loss": None, "test_top3_accuracy": None,
                         "node_accuracy_mean": None}
        data, P = self.workload.dataset, X.shape[1]
        last = rnd == self.rounds
        if last or (self.eval_every and rnd % self.eval_every == 0):
            total = evaluation.test_set(self.engine, xbar, data, self.test_shard)
            figures.update(test_accuracy=total.accuracy, test_loss=total.loss, test_top3_accuracy=total.top3_accuracy)
            stacked = X.reshape(-1)
            figures["node_accuracy_mean"] = float(np.mean([
                evaluation.test_set(self.engine, stacked, data, self.test_shard, stop=NODE_EVAL_EXAMPLES,
                                    span=(i * P, (i + 1) * P)).accuracy for i in range(self.n)]))
        every = self.federated_eval_every
        if every is not None and (last or (every and rnd % every == 0)):
            figures["federated"] = self.federated_evaluate(X)
            if self.finetune is not None:
                figures["personalized"] = self.federated_evaluate(X, self.finetune)
        return figures

    def federated_evaluate(self, X: np.ndarray, finetune: FitConfig | None = None) -> dict | None:
        """Each node's own model on its own held-out split (after fine-tuning with `finetune`): mean, p10/50/90."""
        P = X.shape[1]
        return evaluation.per_client(self.engine, X.reshape(-1), self.workload.dataset, self.workload.seed,
                                     finetune, span_of=lambda i: (i * P, (i + 1) * P))


def check_config(config: Config) -> None:
    """Refuse, before any work, what a decentralized run cannot honour."""
    if config.server.strategy not in ("fedavg", "fedprox"):
        raise ConfigError("server.strategy", f"{config.server.strategy} is a server algorithm; decentralized "
                          "training (decentralized.topology) has no server: use fedavg, or fedprox with client.mu")
    if config.codec.pipeline and not config.decentralized.choco:
        raise ConfigError("codec.pipeline", "D-PSGD gossips raw float32 models; to compress gossip set "
                          "decentralized.choco=true (CHOCO-SGD)")
    if config.codec.download:
        raise ConfigError("codec.download", "decentralized training has no server to download from; "
                          "CHOCO-SGD compresses gossip with codec.pipeline")


def run_decentralized(config: Config, out: str | Path | None = None, on_round: list[Callable] = (),
                      dataset=None, engine: str | Engine | None = None):
    """Run the decentralized experiment a Config with `decentralized.topology` describes; returns a History.

    Writes config.toml, metrics.jsonl, summary.json and report.png to `out` (default runs/<timestamp>),
    like `experiment.run_config`. `History.params` is the final average model x̄.
    """
    from ..plan import client_side, codec_options, dataset_of
    from ..records import History, prepare_run_dir, summarize

    check_config(config)
    section = config.decentralized
    dataset = dataset if dataset is not None else dataset_of(config)
    adjacency = build_topology(section, dataset.num_clients, config.seed)  # a disconnected graph fails here
    pipeline = build_pipeline(config.codec.pipeline, codec_options(config))
    run_dir = prepare_run_dir(out)
    factory, params, fit, finetune = client_side(config, dataset)
    (run_dir / "config.toml").write_text(to_toml(config))
    if engine is None or isinstance(engine, str):
        engine = make_engine(engine or config.engine.name, config.engine.workers, config.engine.address)
    elif engine.client_state == "device":
        raise ConfigError("decentralized.topology", "decentralized training runs in simulation only "
                          "(engine.name = local | pool | ray), not over remote clients")
    history = History(run_dir=run_dir)
    loop = Decentralized(engine, Workload(factory, dataset, Pipeline(), config.seed), adjacency,
                         rounds=config.server.rounds, fit=fit, choco=section.choco, gamma=section.gamma,
                         pipeline=pipeline, node_failure=section.node_failure, eval_every=config.eval.every,
                         federated_eval_every=config.eval.federated_every if config.eval.federated else None,
                         finetune=finetune, on_round=[MetricsWriter(run_dir), history, *on_round])
    try:
        X = loop.run(params)
        history.params = average(X)
    except BaseException as exc:
        history.status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        raise
    finally:
        summary = summarize(history, config.seed, config.model_dump())
        last = history.rounds[-1] if history.rounds else {}
        degree = adjacency.sum(axis=1)
        summary["decentralized"] = {
            "algorithm": "choco-sgd" if section.choco else "d-psgd", "topology": section.topology,
            "nodes": int(len(adjacency)), "edges": int(adjacency.sum() // 2),
            "degree_min": int(degree.min()), "degree_max": int(degree.max()),
            "spectral_gap": spectral_gap(loop.W),
            "consensus_distance": last.get("consensus_distance"),
            "node_accuracy_mean": next((r["node_accuracy_mean"] for r in reversed(history.rounds)
                                        if r.get("node_accuracy_mean") is not None), None),
        }
        write_summary(run_dir, summary)
        if history.rounds:
            write_report(run_dir)
    return history
