"""The gossip schedule of the round loop: every node trains on its own data, then gossips with its neighbours.

No server: node i holds client i's data and its own model, row i of the stacked models X [n, P].
Each round (`Gossip.round`):

1. silent nodes are drawn: each node fails with probability `node_failure`, from the "systems"
   stream of the run seed keyed by (stable_hash("node_failure"), round) (`failure_rng`);
2. every live node trains locally from its own model: one Task per node (the strategy's, FedAvg's local
   work) whose `span` is its row of the stacked vector, so the engine (local or pool) trains all nodes
   of a round in parallel; batch order from `int_seed(seed, "client", round, i)` as in the server's
   rounds. A node whose training raises ("error"), or whose update the loop's filters refuse
   ("rejected"), is silent for this round (a warning in the log);
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
(`failures`; by kind: "unavailable" for a node that failed to wake). With federated evaluation, each
node's own model is also judged on its own held-out split (`federated`), and after fine-tuning with
`finetune` (`personalized`).

A decentralized run keeps no store: running again into the same directory starts from round 1.
The loop's parts work as in every schedule (engine, filters, evaluation, callbacks); a server's
parts (a strategy's aggregate, samplers, aggregators, deadlines) have no place here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np

from ..codec import CodecContext, Pipeline
from ..engine import Engine, Workload
from ..errors import ConfigError
from ..loop import Evaluation, Parts, RoundLoop, RoundRecord, Tally, mean_train_loss
from ..seeding import int_seed, rng, stable_hash
from ..strategy import Strategy
from .gossip import average, choco_gossip, consensus_distance, live_weights, mix
from .topology import metropolis_hastings

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


@dataclass(frozen=True)
class GossipOptions:
    """The graph and how nodes gossip on it: D-PSGD, or CHOCO-SGD (`choco`) with step `gamma` and
    `compressor` as its Q; each node is silent in a round with probability `node_failure`."""

    adjacency: np.ndarray
    choco: bool = False
    gamma: float = 0.5
    compressor: Pipeline | None = None
    node_failure: float = 0.0


class Gossip(RoundLoop):
    """`rounds` rounds of decentralized training of the nodes of `gossip.adjacency` (see the module docstring).

    `strategy` says each node's local work (FedAvg's `configure`); `workload.pipeline` encodes each node's
    local update for the trip back from the engine (use `Pipeline()`: raw float32). Each round's callbacks
    get the average model x̄. `run` returns the final stacked models [n, P].
    """

    def __init__(self, strategy: Strategy, engine: Engine, workload: Workload, *, rounds: int,
                 gossip: GossipOptions, evaluation: Evaluation = Evaluation(), parts: Parts | None = None):
        parts = parts or Parts()
        server_parts = [("sampler", parts.sampler), ("system", parts.system), ("attack", parts.attack),
                        ("download", parts.download), ("record_ledger", parts.record_ledger)]
        for name, part in server_parts:  # what acts through a server has nothing to act on here
            if part is not None:
                raise ConfigError(f"Parts.{name}", "gossip has no server: every node trains every round")
        self.adjacency = np.asarray(gossip.adjacency, dtype=bool)
        self.n = len(self.adjacency)
        if self.n != workload.dataset.num_clients:
            raise ValueError(f"{self.n} nodes in the topology, {workload.dataset.num_clients} clients in the data")
        super().__init__(strategy, engine, workload, rounds=rounds, clients_per_round=self.n, evaluation=evaluation,
                         parts=parts)
        self.W = metropolis_hastings(self.adjacency)
        self.gossip = gossip
        self.compressor = gossip.compressor or Pipeline()

    def schedule(self, params: np.ndarray, start_round: int, sim_time: float) -> np.ndarray:
        """Train every node from the same `params`; returns the stacked final models [n, P]."""
        X = np.tile(params, (self.n, 1))
        X_hat = X.copy() if self.gossip.choco else None
        for rnd in range(start_round, self.rounds + 1):
            before = self.snapshot()
            record = self.round(rnd, X, X_hat)
            xbar = average(X)
            record.extra["consensus_distance"] = consensus_distance(X)
            record.evaluation = self.evaluate(rnd, X, xbar)
            self.close_round(record, xbar, before)
        return X

    def alive(self, rnd: int) -> np.ndarray:
        """The nodes that are not silent in round `rnd` (deterministic in seed and round)."""
        if self.gossip.node_failure <= 0:
            return np.ones(self.n, dtype=bool)
        return failure_rng(self.workload.seed, rnd).random(self.n) >= self.gossip.node_failure

    def round(self, rnd: int, X: np.ndarray, X_hat: np.ndarray | None) -> RoundRecord:
        """Local training of the live nodes, then one gossip step; X (and X_hat) change in place."""
        tally = Tally(sampled=self.n)
        alive = self.alive(rnd)
        tally.fail("unavailable", int((~alive).sum()))
        self.train(rnd, X, alive, tally)
        if self.gossip.choco:
            sent, messages = self._choco(rnd, X, X_hat, alive)
        else:
            X[...] = mix(X, live_weights(self.W, alive))
            messages = int((self.adjacency & alive[None, :]).sum(axis=1)[alive].sum())
            sent = 4 * X.shape[1] * messages
        live = int(alive.sum())
        tally.bytes_up = tally.bytes_down = sent
        tally.bytes_up_raw = tally.bytes_down_raw = 4 * X.shape[1] * messages  # the same messages as raw float32
        return RoundRecord(rnd, tally, train_loss=mean_train_loss(tally.losses),
                           fit_metrics=self.fit_figures(tally),
                           extra={"bytes_per_node": sent / live if live else 0.0})

    def train(self, rnd: int, X: np.ndarray, alive: np.ndarray, tally: Tally) -> None:
        """Each live node's local update added to its row of X; a node that fails is silent (alive[i] = False)."""
        P = X.shape[1]
        ids = np.flatnonzero(alive).tolist()
        tasks = [replace(t, config=replace(t.config, seed=int_seed(self.workload.seed, "client", rnd, t.client_id)),
                         span=(t.client_id * P, (t.client_id + 1) * P))
                 for t in self.configure(rnd, X[0], ids)]
        # Each task reads only its own row, and a row changes only once its task is done.
        for outcome in self.engine.run(X.reshape(-1), tasks):
            i = outcome.task.client_id
            if outcome.error is not None:
                tally.fail("error")
                log.warning("round %d: node %d is silent this round: %s", rnd, i, outcome.error)
                alive[i] = False
                continue
            update = self.filters.accept(outcome, P, tally)
            if update is None:
                alive[i] = False
                continue
            tally.keep(update, None)
            X[i] += update.update

    def _choco(self, rnd: int, X: np.ndarray, X_hat: np.ndarray, alive: np.ndarray) -> tuple[int, int]:
        """CHOCO-SGD's gossip step: (bytes sent, messages)."""
        seed = self.workload.seed
        sizes = np.zeros(self.n, dtype=np.int64)

        def Q(v: np.ndarray, i: int) -> np.ndarray:
            ctx = CodecContext(rnd, i, seed)
            payload = compress(self.compressor, v, ctx)
            sizes[i] = len(payload)
            return self.compressor.decode(payload, ctx)

        choco_gossip(X, X_hat, self.W, self.gossip.gamma, Q, alive)
        receivers = self.adjacency.sum(axis=1)  # silent neighbours receive too (see the module docs)
        return int((sizes * receivers)[alive].sum()), int(receivers[alive].sum())

    def evaluate(self, rnd: int, X: np.ndarray, xbar: np.ndarray) -> dict:
        """x̄ on the test set, each node on the first test examples, and each node on its held-out split."""
        figures = self.evaluator.figures(rnd, xbar, stacked=X)
        figures["node_accuracy_mean"] = None
        if self.evaluator.central_due(rnd):
            from .. import evaluation

            data, P, stacked = self.dataset, X.shape[1], X.reshape(-1)
            figures["node_accuracy_mean"] = float(np.mean([
                evaluation.test_set(self.engine, stacked, data, self.evaluator.plan.test_shard,
                                    stop=NODE_EVAL_EXAMPLES, span=(i * P, (i + 1) * P)).accuracy
                for i in range(self.n)]))
        return figures
