"""The synchronous round loop: sample, configure, run, aggregate, evaluate, record.

Rounds run on a simulated clock (`sim_time_s` in each record), driven by the fleet (`systems.py`).
An attempt of a round starts at the current simulated time `now`; all its clients start together:

1. if no client of the fleet is online at `now`, the server idles until one is (that wait is part of
   the attempt's time); then the sampler draws ⌈(1 + overselect)·K⌉ clients (K = clients_per_round);
2. a drawn client offline at `now` fails as "unavailable"; one that drops out (a Bernoulli(dropout)
   draw per round, attempt and client, the same on every engine) fails as "dropout". Neither runs,
   and neither holds the round up: an offline device never answers the call, and a dropout is a
   lost connection the server sees at once. The others receive the model (`bytes_down`);
3. the rest train on the engine; each result arrives `DeviceProfile.task_seconds(samples, bytes of
   the global model as sent, bytes of the encoded update)` after `now`;
4. with a deadline (`deadline_s` > 0), a result arriving later is dropped as "deadline" — unless
   `partial_work`: then a client whose full work would arrive late is asked beforehand for the
   local steps that fit (`_fit_deadline`) and counts like any other;
5. with over-selection (`overselect` > 0) the results are judged in order of arrival (ties: in task
   order) and the first K accepted are aggregated, in that order; later ones are "overselected"
   (not failures). Without it, results are judged and aggregated as they stream, in task order;
6. the attempt lasts until the K-th accepted result when over-selection filled the round; otherwise
   until the deadline if some result was late (a straggler cannot be told from a slow device, so
   the server waits for it until then); otherwise until the last accepted result.

A round with fewer than `min_clients` accepted results is tried again (other clients, attempt + 1)
starting when the failed attempt ended, up to `round_retries` times; its time is the sum of its
attempts'. Failures are counted by kind (`failures_by_kind`: dropout, deadline, unavailable, error
— the client raised —, rejected — a malformed update); `failures` is their total.

Update validation, always on, for every strategy (`update_problem`): an update that does not decode,
has the wrong length, is not float32, holds NaN/inf or comes with a negative weight is rejected and
never aggregated; with `max_norm_ratio` > 0 so is one whose L2 norm exceeds that many times the median
norm of its round's updates (a round-level check: the round's accepted updates are then held until
the last has arrived, and judged together). Rejections are counted by reason in `rejected_by_reason`
(`REJECT_REASONS`) and each is logged. A simulated attack (`fedstack.attack`) replaces the malicious
clients' updates after decoding and before these checks, so validation judges what they send.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from dataclasses import dataclass, replace
from typing import Callable, Iterable, Iterator

import numpy as np

from . import evaluation
from .client import FitConfig
from .codec import CodecContext, Pipeline
from .engine import Engine, Outcome, Workload
from .errors import ConfigError, FedstackError, brief
from .profiling import Profile, ProfiledEngine
from .sampling import UniformSampler, overselected
from .seeding import int_seed
from .store import MemoryClientStates
from .strategy import (ClientUpdate, Strategy, broadcast, needs_client_state, restore_strategy_state,
                       strategy_state)
from .systems import UniformSystem
from .validation import dp_release, influence, update_problem

log = logging.getLogger("fedstack.server")

# The client id in the codec context of the server's own messages (the global model on the way down).
SERVER_ID = 2**32 - 1
# How a sampled client can fail to contribute, as counted in each round's `failures_by_kind`.
FAILURE_KINDS = ("dropout", "deadline", "unavailable", "error", "rejected")
# Why an update was rejected, as counted in each round's `rejected_by_reason` (protocol: a deployed
# secure round refused the client's masked input or ciphertext; metrics: a DP-SGD client's privacy figures).
REJECT_REASONS = ("undecodable", "shape", "dtype", "non_finite", "weight", "norm", "protocol", "metrics")


@dataclass
class Ride:
    """A finished round waiting for its central evaluation, which runs with the next round's training."""

    params: np.ndarray
    tasks: list
    record: dict
    started: float  # when the run started (records carry wall time since then)


class Server:
    """Runs `rounds` synchronous rounds of `strategy` over `engine`; owns only the loop.

    After each round it calls every `on_round(record)` with the round's figures (the keys of
    metrics.jsonl); a store, a progress bar and the metrics file are such callbacks.
    Evaluation intervals: N = every N rounds and after the last; 0 = only after the last;
    None (federated only) = never. With `finetune`, federated evaluation also reports each
    client's accuracy after fine-tuning the global model with that config (personalisation).

    A strategy whose clients keep state (SCAFFOLD) needs an engine that can carry it; where
    the server keeps it ("task" engines), it lives in `client_states` (a RunStore, or memory).

    `system` is the simulated fleet (default: equal devices that never fail); `deadline_s`,
    `overselect` and `partial_work` shape rounds on its clock as the module docstring says.
    `max_norm_ratio` (> 0) rejects updates longer than that many times their round's median norm;
    `attack` (simulation only) poisons the malicious clients' tasks and updates (fedstack.attack).
    """

    asynchronous = False  # which kind of strategy this loop runs (fedstack.async_loop runs the others)

    def __init__(self, strategy: Strategy, engine: Engine, workload: Workload, *, rounds: int,
                 clients_per_round: int, min_clients: int = 1, eval_every: int = 1,
                 federated_eval_every: int | None = 0, test_shard: int = 1000, sampler=None,
                 system=None, round_retries: int = 2, client_states=None, finetune: FitConfig | None = None,
                 download: Pipeline | None = None, deadline_s: float = 0.0, overselect: float = 0.0,
                 partial_work: bool = False, epsilon_budget: float = 0.0, record_ledger=None,
                 profile: Profile | None = None, max_norm_ratio: float = 0.0, attack=None,
                 on_round: list[Callable[[dict, np.ndarray], None]] | None = None):
        if strategy.asynchronous != self.asynchronous:
            raise ConfigError("server.strategy", f"{type(strategy).__name__} needs the "
                              f"{'asynchronous' if not self.asynchronous else 'synchronous'} loop")
        self.strategy = strategy
        self.profile = profile  # where time goes (--profile): the engine books worker time, this loop its own
        self.engine = ProfiledEngine(engine, profile) if profile is not None else engine
        # A summing protocol (secagg, ckks) is run by this loop; workers apply only the stages before it.
        self.secure = workload.pipeline.summing
        workload = replace(workload, pipeline=workload.pipeline.before_summing())
        self.workload = workload
        self.rounds = rounds
        self.clients_per_round = clients_per_round
        self.min_clients = min_clients
        self.round_retries = round_retries
        self.eval_every = eval_every
        self.federated_eval_every = federated_eval_every
        self.test_shard = test_shard
        self.dataset = workload.dataset
        self.sampler = sampler or UniformSampler(self.dataset.num_clients, workload.seed)
        self.system = system or UniformSystem(seed=workload.seed)
        fleet = self.system.num_clients
        if fleet is not None and fleet < self.dataset.num_clients:
            raise FedstackError(f"the device fleet has {fleet} devices for {self.dataset.num_clients} clients")
        if deadline_s < 0:
            raise ConfigError("server.deadline_s", f"must be >= 0 (0 = no deadline), got {deadline_s}")
        if overselect < 0:
            raise ConfigError("server.overselect", f"must be >= 0, got {overselect}")
        if partial_work and not deadline_s:
            raise ConfigError("client.partial_work", "partial work needs a deadline (server.deadline_s > 0)")
        self.deadline_s = float(deadline_s)
        self.overselect = float(overselect)
        self.partial_work = partial_work
        self.sample_size = overselected(clients_per_round, overselect)
        if self.sample_size > self.dataset.num_clients:
            raise ConfigError("server.overselect", f"asks {self.sample_size} clients of {self.dataset.num_clients}")
        self.on_round = list(on_round or [])
        self.rejected = 0
        if 0 < max_norm_ratio < 1:
            raise ConfigError("server.max_norm_ratio", f"must be 0 (off) or >= 1, got {max_norm_ratio}")
        if self.secure is not None and (max_norm_ratio or (attack is not None and attack.tampers)):
            raise ConfigError("server.max_norm_ratio" if max_norm_ratio else "attack.name",
                              "secure aggregation never shows the server a client's update")
        self.max_norm_ratio = float(max_norm_ratio)
        self.attack = attack
        self.epsilon_budget = epsilon_budget
        self.record_ledger = record_ledger  # DP-SGD clients: each one's own ε (privacy.RecordLevelLedger)
        self.stopped: str | None = None  # why the run ended before its last round (the privacy budget)
        self.finetune = finetune
        self.download = download or Pipeline()
        self.keeps_state = False  # whether this server keeps client state and sends it with tasks
        who = ("server.strategy", type(strategy).__name__) if needs_client_state(strategy) else \
            ("codec.pipeline", "error feedback") if workload.pipeline.stateful else None
        if who is not None:
            where = engine.client_state
            if where not in ("task", "device"):
                raise FedstackError(f"{who[0]}: {who[1]} keeps state on each client across rounds, which "
                                    f"engine {type(engine).__name__} cannot carry")
            self.keeps_state = where == "task"
        self.client_states = client_states if client_states is not None else MemoryClientStates()
        self._ride: Ride | None = None  # a finished round whose central evaluation rides with the next round

    def run(self, params: np.ndarray, start_round: int = 1, sim_time: float = 0.0) -> np.ndarray:
        """Train from `params` (a resumed run starts later, its clock at `sim_time`); returns the final params."""
        params = np.ascontiguousarray(params, dtype=np.float32)
        started = time.perf_counter()
        try:
            self.engine.start(self.workload)
            for rnd in range(start_round, self.rounds + 1):
                if self._over_budget(rnd):
                    break
                before = self.profile.snapshot() if self.profile is not None else None
                clip_norm = self.strategy.clip_norm
                params, record = self.round_with_retries(rnd, params, sim_time)
                if self._ride is not None:  # the round ran no task to carry it: evaluate on its own
                    ride, self._ride = self._ride, None
                    self._land(ride, self.engine.run(ride.params, ride.tasks))
                sim_time += record.pop("round_sim_s")
                record["sim_time_s"] = sim_time
                epsilon = self.strategy.epsilon()
                if epsilon is not None:  # differential privacy: what the run has spent
                    record.update(epsilon=epsilon, clip_norm=clip_norm)
                dp_clients = record.pop("dp_clients", [])  # the ledger's input, not a figure of the round
                if self.record_ledger is not None:  # DP-SGD: the largest own ε of this round's clients
                    record["client_epsilon_max"] = self._client_epsilon_max(dp_clients)
                if self._rides(rnd):  # its central evaluation runs with the next round's training
                    record.update(self.evaluate(rnd, params, central=False))
                    self.finish_record(record, started, before)  # its evaluation is booked to the next round
                    self._ride = Ride(params, evaluation.shards(self.dataset, self.test_shard), record, started)
                    continue
                record.update(self.evaluate(rnd, params))
                self._close(record, params, started, before)
        finally:
            self.engine.close()
        return params

    def _close(self, record: dict, params: np.ndarray, started: float, before: Profile | None) -> None:
        """A round is over: stamp its record and hand it to the callbacks (metrics, store, progress)."""
        self.finish_record(record, started, before)
        for callback in self.on_round:
            callback(record, params)

    def _rides(self, rnd: int) -> bool:
        """Whether round `rnd`'s central evaluation can run in the same engine batch as round `rnd + 1`'s
        training: that round trains from the very vector it evaluates, and nothing that a checkpoint
        keeps (strategy or sampler state, privacy ledgers) changes before the evaluation lands."""
        every = self.federated_eval_every
        return (self.engine.parallel and rnd < self.rounds
                and bool(self.eval_every) and rnd % self.eval_every == 0
                and not (every and rnd % every == 0) and self.secure is None and not self.download.stages
                and not self.strategy.stateful and not self.strategy.broadcasts
                and not self.sampler.stateful and self.record_ledger is None and not self.epsilon_budget)

    def _land(self, ride: Ride, outcomes) -> None:
        """The riding evaluation is back: complete its round's record and close that round."""
        result = evaluation.total(outcomes)
        ride.record.update(test_accuracy=result.accuracy, test_loss=result.loss,
                           test_top3_accuracy=result.top3_accuracy,
                           wall_time_s=time.perf_counter() - ride.started)
        for callback in self.on_round:
            callback(ride.record, ride.params)

    def _with_ride(self, outcomes: Iterable[Outcome]) -> Iterator[Outcome]:
        """The round's own outcomes, after landing the evaluation that rode in front of them."""
        ride, self._ride = self._ride, None
        outcomes = iter(outcomes)
        if ride is not None:
            self._land(ride, [next(outcomes) for _ in ride.tasks])
        yield from outcomes

    def finish_record(self, record: dict, started: float, before: Profile | None) -> None:
        """Stamp the wall time on a round's record and, when profiling, where the round's time went."""
        record["wall_time_s"] = time.perf_counter() - started
        if self.profile is not None:
            self.profile.wall_s = record["wall_time_s"]
            record["profile"] = self.profile.since(before).summary()

    def _over_budget(self, rnd: int) -> bool:
        """Whether round `rnd` would spend more than `epsilon_budget` (then the run stops, saying why)."""
        after = self.strategy.epsilon_after(1) if self.epsilon_budget else None
        if after is None or after <= self.epsilon_budget:
            return False
        self.stopped = (f"stopped before round {rnd}: it would raise ε to {after:.4g}, over "
                        f"privacy.epsilon_budget = {self.epsilon_budget:g}")
        log.warning("%s", self.stopped)
        return True

    def round_with_retries(self, rnd: int, params: np.ndarray, start: float = 0.0) -> tuple[np.ndarray, dict]:
        """A round starting at simulated time `start`, tried again (with other clients, from when the
        failed attempt ended) while fewer than `min_clients` succeed. Counts add up over attempts,
        except `clients` and `partial`: those of the attempt that counted (or the last)."""
        totals = {"failures": 0, "bytes_up": 0, "bytes_down": 0, "bytes_up_raw": 0, "bytes_down_raw": 0,
                  "round_sim_s": 0.0, "sampled": 0, "overselected": 0}
        kinds = dict.fromkeys(FAILURE_KINDS, 0)
        reasons = dict.fromkeys(REJECT_REASONS, 0)
        for attempt in range(self.round_retries + 1):
            before = strategy_state(self.strategy)
            new_params, record = self.round(rnd, params, attempt, start + totals["round_sim_s"])
            states = record.pop("client_states")
            if "secure_aborts" in record:
                totals.setdefault("secure_aborts", 0)
            for key in totals:
                totals[key] += record[key]
            for kind, count in record["failures_by_kind"].items():
                kinds[kind] += count
            for reason, count in record["rejected_by_reason"].items():
                reasons[reason] += count
            if record["clients"] >= self.min_clients:
                if states:
                    self.client_states.put(rnd, states)
                break
            restore_strategy_state(self.strategy, before)  # an attempt that did not count leaves no trace
            log.warning("round %d: %d successful clients < server.min_clients=%d; %s", rnd, record["clients"],
                        self.min_clients, "retrying" if attempt < self.round_retries else "global model kept")
        return new_params, {**record, **totals, "failures_by_kind": kinds, "rejected_by_reason": reasons,
                            "attempts": attempt + 1}

    def round(self, rnd: int, params: np.ndarray, attempt: int = 0,
              start: float = 0.0) -> tuple[np.ndarray, dict]:
        """One attempt of a training round at simulated time `start`; returns the new params
        (unchanged below `min_clients`) and the attempt's figures (`round_sim_s`: how long it took)."""
        seed = self.workload.seed
        now, waited = self._wait_for_online(rnd, start)
        ids = self._sample(rnd, attempt, now)
        sent = np.ascontiguousarray(broadcast(self.strategy, params), dtype=np.float32)
        download = sent.nbytes  # the global vector travels as raw float32, or as the download codecs make it
        if self.download.stages:
            ctx = CodecContext(rnd, SERVER_ID, seed)
            payload = self.download.encode(sent, ctx)
            sent, download = np.ascontiguousarray(self.download.decode(payload, ctx)), len(payload)
        kinds = dict.fromkeys(FAILURE_KINDS, 0)
        tasks, reached, partial = [], [], set()
        for task in self.strategy.configure(rnd, params, ids):
            cid = task.client_id
            if not self.system.online(cid, now):
                kinds["unavailable"] += 1
                continue
            reached.append(cid)  # it receives the global model
            if self.system.drops(rnd, attempt, cid):
                kinds["dropout"] += 1
                continue
            task = replace(task, config=replace(task.config, seed=int_seed(seed, "client", rnd, cid)))
            if self.partial_work:
                fitted = self._fit_deadline(task, download, sent.size)
                if fitted is None:  # not even one step fits: it cannot be on time
                    kinds["deadline"] += 1
                    continue
                if fitted is not task:
                    partial.add(cid)
                task = fitted
            tasks.append(task)
        if self.attack is not None:  # simulation: malicious clients' tasks (data attacks train on flipped labels)
            tasks = [self.attack.task(t) for t in tasks]
        if self.keeps_state:
            tasks = [replace(t, state=self.client_states.get(t.client_id)) for t in tasks]
        if kinds["unavailable"] or kinds["dropout"] or kinds["deadline"]:
            log.info("round %d: %d sampled, %d offline, %d dropped out, %d cannot finish a step by the deadline",
                     rnd, len(ids), kinds["unavailable"], kinds["dropout"], kinds["deadline"])
        tally = {"clients": 0, "bytes_up": 0, "bytes_up_raw": 0, "partial": 0,
                 "rejected_by_reason": dict.fromkeys(REJECT_REASONS, 0)}
        dp_clients: list[int] = []  # DP-SGD clients that trained in this attempt
        losses: list[tuple] = []  # (train_loss, num_examples) of the updates that passed every check
        secure = self._secure_round(rnd, attempt, reached)
        if self.secure is not None:
            tally["secure_aborts"] = 0  # attempts whose secure aggregation aborted (counted over retries)
            if secure is None:
                tasks = []  # no secure aggregation, no aggregation: the round fails below min_clients
                tally["secure_aborts"] = int(bool(reached))
        remote = secure is not None and self.engine.exchanges  # deployed secagg or ckks: devices mask or encrypt
        if remote:
            tasks, reached = self._masking_tasks(rnd, secure, tasks, reached, kinds)
        states: dict[int, np.ndarray] = {}
        target = self.clients_per_round if self.overselect > 0 else None
        clock = {"last": 0.0, "late": False, "full": False, "overselected": 0}
        # Round-level checks and update attacks need the round's updates at once: hold them until the last.
        hold = self.secure is None and (self.max_norm_ratio > 0 or (self.attack is not None and self.attack.tampers))
        held: list[tuple[ClientUpdate, object]] = []  # (update, its client's new state)

        def deliver(update: ClientUpdate, state) -> Iterator[ClientUpdate]:
            """An update that passed every check: keep its client's new state, hand the update on."""
            if self.keeps_state and state is not None:
                states[update.client_id] = state
            if update.client_id in partial:
                tally["partial"] += 1
            losses.append((update.metrics.get("train_loss"), update.num_examples))
            if secure is None:
                yield update
            elif not remote:  # the client's simulated device masks it; the server will see only the sum
                secure.submit(update.client_id, update.update)

        def arrival(outcome: Outcome) -> float:
            """Seconds after `now` at which a client's result reaches the server."""
            work = outcome.task.config.samples(outcome.value.num_examples)
            return self.system.device(outcome.task.client_id).task_seconds(work, download,
                                                                           len(outcome.value.payload))

        def updates() -> Iterator[ClientUpdate]:
            riding = self._ride.tasks if self._ride is not None and self.secure is None else []
            outcomes: Iterable[Outcome] = self._with_ride(self.engine.run(sent, [*riding, *tasks]))
            if target is not None:  # the first K to arrive: every result is in before one is judged
                outcomes = sorted(outcomes, key=lambda o: -1.0 if o.error is not None else arrival(o))
            for outcome in outcomes:
                if outcome.error is not None:
                    kinds["error"] += 1
                    log.warning("round %d: client %d failed: %s", rnd, outcome.task.client_id, outcome.error)
                    continue
                seconds = arrival(outcome)
                if clock["full"]:
                    clock["overselected"] += 1
                    continue
                if self.deadline_s and seconds > self.deadline_s:
                    kinds["deadline"] += 1
                    clock["late"] = True
                    self.sampler.observe(rnd, outcome.task.client_id, duration_s=seconds)
                    log.info("round %d: client %d arrives after %.3g s, past the deadline of %.3g s",
                             rnd, outcome.task.client_id, seconds, self.deadline_s)
                    continue
                if remote:  # a masked or encrypted vector, which the server cannot read: the protocol checks it
                    update = self._collect(outcome, secure, sent.size, tally, kinds)
                else:
                    update = self._accept(outcome, sent.size, tally, kinds)
                if update is not None:
                    update = self._account(rnd, update, outcome.task.config, dp_clients, tally, kinds)
                if update is not None:
                    self.sampler.observe(rnd, update.client_id, num_examples=update.num_examples,
                                         loss=update.metrics.get("train_loss"), duration_s=seconds)
                    clock["last"] = max(clock["last"], seconds)
                    clock["full"] = target is not None and tally["clients"] >= target
                    if hold:
                        held.append((update, outcome.value.state))
                    else:
                        yield from deliver(update, outcome.value.state)
            if held:
                state_of = {u.client_id: state for u, state in held}
                passed = deque(self._screen(rnd, [u for u, _ in held], sent.size, tally, kinds))
                held.clear()  # from here each update lives only until the strategy has taken it
                while passed:
                    update = passed.popleft()
                    yield from deliver(update, state_of[update.client_id])
            if secure is not None and tally["clients"]:
                yield from self._unmask(rnd, secure, tally)

        if self.profile is None:
            new_params = self.strategy.aggregate(rnd, params, updates())
        else:  # aggregation is what the call takes beyond waiting for the engine and decoding
            before, started = self.profile.snapshot(), time.perf_counter()
            new_params = self.strategy.aggregate(rnd, params, updates())
            spent = self.profile.since(before)
            self.profile.aggregate_s += time.perf_counter() - started - spent.wait_s - spent.decode_s
        if remote:  # protocol messages the deployed round refused (malformed, misaddressed, ...)
            key = f"{self.secure.name}_rejected"  # secagg_rejected, ckks_rejected
            tally[key] = sum(secure.rejected.values())
            if tally[key]:
                log.warning("round %d: %s rejected %s", rnd, self.secure.name, dict(secure.rejected))
        figures = self.strategy.round_figures()
        if tally["clients"] < self.min_clients:
            new_params = params
        duration = clock["last"] if clock["full"] or not clock["late"] else self.deadline_s
        record = {"round": rnd, **tally, "failures": sum(kinds.values()), "failures_by_kind": kinds,
                  "sampled": len(ids), "overselected": clock["overselected"],
                  "bytes_down": download * len(reached) + (secure.bytes_down if secure else 0),
                  "bytes_down_raw": sent.nbytes * len(reached),
                  "train_loss": mean_train_loss(losses),
                  "round_sim_s": waited + duration, "client_states": states, "dp_clients": dp_clients, **figures}
        return np.ascontiguousarray(new_params, dtype=np.float32), record

    def _secure_round(self, rnd: int, attempt: int, cohort: list[int]):
        """A summing protocol's round (secagg, ckks) with every client that received the model, or None.

        In simulation each client's side of the protocol runs on its own simulated device object,
        which hands the server only protocol messages. With an engine that can `exchange` protocol
        messages (deployed clients), it runs with the devices themselves, a round trip per step.
        """
        if self.secure is None or not cohort:
            return None
        from .secagg import SecAggAbort

        seed = int_seed(self.workload.seed, "codec", rnd, attempt)
        try:
            if self.engine.exchanges:
                return self.secure.open_round(cohort, seed, engine=self.engine, round=rnd)
            return self.secure.open_round(cohort, seed)
        except (SecAggAbort, ValueError) as exc:
            log.warning("round %d: secure aggregation cannot start: %s", rnd, exc)
            return None

    def _masking_tasks(self, rnd: int, secure, tasks: list, reached: list[int], kinds: dict) -> tuple[list, list]:
        """Deployed secagg or ckks: (the fit tasks of the clients the protocol's setup reached, each carrying
        its request — secagg: the masked-input request, ckks: the key id —; the clients the model goes to).
        One silent during the setup is a dropout."""
        requests = {t.client_id: secure.request_for(t.client_id) for t in tasks}
        lost = sorted(cid for cid, request in requests.items() if request is None)
        if lost:
            kinds["dropout"] += len(lost)
            log.warning("round %d: clients %s dropped out during the protocol's setup (keys)", rnd, lost)
        tasks = [replace(t, protocol=requests[t.client_id]) for t in tasks if requests[t.client_id] is not None]
        return tasks, [cid for cid in reached if requests.get(cid) is not None]

    def _collect(self, outcome: Outcome, secure, size: int, tally: dict, kinds: dict) -> ClientUpdate | None:
        """A deployed client's masked input or ciphertext, handed unread to the secure round; None if refused.

        The returned update carries no vector: only its client's figures (weight, metrics).
        """
        task, reply = outcome.task, outcome.value
        tally["bytes_up"] += len(reply.payload)
        tally["bytes_up_raw"] += 4 * size
        if not secure.collect(task.client_id, reply.payload, size):
            self._reject(task.round, task.client_id, "protocol", "the secure round refused its protected update",
                         tally, kinds)
            return None
        tally["clients"] += 1
        return ClientUpdate(task.client_id, np.empty(0, dtype=np.float32), reply.num_examples, reply.metrics)

    def _unmask(self, rnd: int, secure, tally: dict) -> Iterator[ClientUpdate]:
        """Secure aggregation's unmasking (ckks: the key holder's decryption): one update, the mean of the
        survivors' (nothing if it aborts)."""
        from .secagg import SecAggAbort

        try:
            total, members = secure.finish()
        except (SecAggAbort, ValueError) as exc:
            log.warning("round %d: secure aggregation aborted, nothing aggregated: %s", rnd, exc)
            tally["clients"] = 0
            tally["secure_aborts"] = 1
            return
        tally["bytes_up"] = secure.bytes_up  # what crossed the wire: keys, shares, masked vectors or ciphertexts, ...
        tally["clients"] = len(members)
        yield ClientUpdate(-1, (total / len(members)).astype(np.float32), len(members), members=tuple(members))

    def _wait_for_online(self, rnd: int, start: float) -> tuple[float, float]:
        """(when the attempt starts, how long the server idled for it): until some client is online."""
        n = self.dataset.num_clients
        if self.system.any_online(start, n):
            return start, 0.0
        later = self.system.next_online(start, n)
        if not math.isfinite(later):
            log.warning("round %d: no client is online at t=%.0f s, nor will be", rnd, start)
            return start, 0.0
        log.info("round %d: no client online at t=%.0f s; waiting until t=%.0f s", rnd, start, later)
        return later, later - start

    def _sample(self, rnd: int, attempt: int, now: float) -> list[int]:
        return self.sampler.sample(rnd, self.sample_size, attempt, now=now)

    def _fit_deadline(self, task, download: int, size: int):
        """The task itself if its full work arrives by the deadline, else the same task cut to the
        local steps that do (partial work, FedProx-style), or None if not even one step does.

        Time → steps: the compute time left is deadline − download time − upload time, and a step
        takes step_samples / samples_per_s seconds (step_samples = min(batch_size, the client's
        examples), as FitConfig.samples counts them). The upload is planned at the raw float32 size
        of the update (4 bytes a value): the real payload is not known before training, and no
        compressing codec makes it larger; a codec that does can make such a client late after all.
        The steps run with the same seed, so they are the first batches of the full work.
        """
        examples = len(self.dataset.train_idx[task.client_id])
        config = task.config
        device = self.system.device(task.client_id)
        planned_up = 4 * size
        if device.task_seconds(config.samples(examples), download, planned_up) <= self.deadline_s:
            return task
        steps = device.steps_within(self.deadline_s, download, planned_up, config.step_samples(examples))
        if steps < 1:
            return None
        return replace(task, config=replace(config, local_steps=steps))

    def _accept(self, outcome: Outcome, size: int, tally: dict, kinds: dict) -> ClientUpdate | None:
        """Decode and check one client's result; a malformed update is counted ("rejected"), not fatal."""
        task = outcome.task
        reply = outcome.value
        tally["bytes_up"] += len(reply.payload)
        tally["bytes_up_raw"] += 4 * size  # what the update would weigh as raw float32
        started = time.perf_counter()
        try:
            update, problem = reply.update, None  # decoded and checked once, by the transport, on arrival
            if update is None:
                ctx = CodecContext(task.round, task.client_id, self.workload.seed)
                update = self.workload.pipeline.decode(reply.payload, ctx, size)
                problem = update_problem(update, size, reply.num_examples)
        except Exception as exc:  # an undecodable payload is the client's fault, not the round's
            problem = ("undecodable", f"undecodable payload ({brief(exc)})")
        if self.profile is not None:
            self.profile.decode_s += time.perf_counter() - started
        if problem:
            self._reject(task.round, task.client_id, *problem, tally, kinds)
            return None
        tally["clients"] += 1
        return ClientUpdate(task.client_id, update, reply.num_examples, reply.metrics)

    def _account(self, rnd: int, update: ClientUpdate, config: FitConfig, dp_clients: list[int], tally: dict,
                 kinds: dict) -> ClientUpdate | None:
        """Book a DP-SGD client's release in the record-level ledger (and list it in `dp_clients`); the update,
        or None if its privacy figures are missing or out of range (a deployed client's word is checked)."""
        if self.record_ledger is None or "dp_steps" not in update.metrics:
            return update
        release = dp_release(update.metrics)
        if release is None:
            self._reject(rnd, update.client_id, "metrics", "dp_steps / dp_sample_rate missing or out of range",
                         tally, kinds, counted=True)
            return None
        self.record_ledger.add(update.client_id, *release, config.dp_noise_multiplier)
        dp_clients.append(update.client_id)
        return update

    def _client_epsilon_max(self, dp_clients: list[int]) -> float | None:
        """The largest record-level ε among `dp_clients` (DP-SGD), or None without any."""
        spent = self.record_ledger.epsilons(dp_clients)
        return float(spent.max()) if spent.size else None

    def _reject(self, rnd: int, client_id: int, reason: str, message: str, tally: dict, kinds: dict,
                counted: bool = False) -> None:
        """Count and log a rejected update (`counted`: it had been accepted into the round's clients)."""
        kinds["rejected"] += 1
        self.rejected += 1
        tally["rejected_by_reason"][reason] += 1
        if counted:
            tally["clients"] -= 1
        log.warning("round %d: rejected update from client %d (%s): %s", rnd, client_id, reason, message)

    def _screen(self, rnd: int, updates: list[ClientUpdate], size: int, tally: dict, kinds: dict,
                recent: deque | None = None) -> list[ClientUpdate]:
        """The updates that pass the round-level checks, in order, after a simulated attack replaced the
        malicious clients' (an attacker's vector is checked like any). The norm bound compares each
        update with the median norm of `updates` (and of the `recent` norms, which it extends)."""
        if self.attack is not None and self.attack.tampers:
            honest, updates = updates, []
            for before, u in zip(honest, self.attack.tamper(rnd, honest)):
                problem = update_problem(u.update, size, u.num_examples) if u is not before else None
                if problem:
                    self._reject(rnd, u.client_id, *problem, tally, kinds, counted=True)
                else:
                    updates.append(u)
        if not self.max_norm_ratio or not updates:
            return updates
        norms = influence(updates)
        median = float(np.median(norms if recent is None else np.r_[list(recent), norms]))
        if recent is not None:
            recent.extend(norms.tolist())
        passed = []
        for u, norm in zip(updates, norms):
            if norm > self.max_norm_ratio * median:
                self._reject(rnd, u.client_id, "norm", f"weighted L2 norm {norm:.4g} > server.max_norm_ratio = "
                             f"{self.max_norm_ratio:g} × the median {median:.4g}", tally, kinds, counted=True)
            else:
                passed.append(u)
        return passed

    def evaluate(self, rnd: int, params: np.ndarray, central: bool = True) -> dict:
        """Central test-set figures (every `eval_every` rounds and the last), and federated ones."""
        started = time.perf_counter()
        figures: dict = {"test_accuracy": None, "test_loss": None, "test_top3_accuracy": None}
        last = rnd == self.rounds
        if central and (last or (self.eval_every and rnd % self.eval_every == 0)):
            total = evaluation.test_set(self.engine, params, self.dataset, self.test_shard)
            figures.update(test_accuracy=total.accuracy, test_loss=total.loss,
                           test_top3_accuracy=total.top3_accuracy)
        every = self.federated_eval_every
        if every is not None and (last or (every and rnd % every == 0)):
            figures["federated"] = self.federated_evaluate(params)
            if self.finetune is not None:
                figures["personalized"] = self.federated_evaluate(params, self.finetune)
        if self.profile is not None:
            self.profile.evaluate_wall_s += time.perf_counter() - started
        return figures

    def federated_evaluate(self, params: np.ndarray, finetune: FitConfig | None = None) -> dict | None:
        """Accuracy of `params` on each client's held-out split (after fine-tuning with `finetune`)."""
        return evaluation.per_client(self.engine, params, self.dataset, self.workload.seed, finetune)


def mean_train_loss(losses: Iterable[tuple]) -> float | None:
    """The example-weighted mean of (train_loss, num_examples) pairs of a round's accepted updates, or None.

    A missing or non-finite loss is skipped (DP-SGD clients report NaN: their loss is not private); when
    the remaining weights sum to zero, the plain mean."""
    values, weights = [], []
    for loss, examples in losses:
        if isinstance(loss, (int, float, np.floating)) and math.isfinite(loss):
            values.append(float(loss))
            weights.append(max(float(examples), 0.0))
    if not values:
        return None
    total = sum(weights)
    if total <= 0:
        return sum(values) / len(values)
    return sum(v * w for v, w in zip(values, weights)) / total
