"""The synchronous schedule: sample, configure, run, aggregate, evaluate, record — round after round.

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
   local steps that fit (`RoundLoop.fit_deadline`) and counts like any other;
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

Every update passes the loop's filters (`loop.filters`: decode, validate, account, attack, screen)
on its way to the aggregator (`loop.aggregate`), which hands it to the strategy.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, replace
from typing import Iterable, Iterator

import numpy as np

from .. import evaluation
from ..engine import Outcome
from ..errors import ConfigError
from ..sampling import overselected
from ..seeding import int_seed
from ..strategy import ClientUpdate
from .aggregate import Collection
from .core import RoundLoop
from .evaluate import test_figures
from .record import RoundRecord, Tally, mean_train_loss

log = logging.getLogger("fedstack.server")


@dataclass
class Ride:
    """A finished round waiting for its central evaluation, which runs with the next round's training."""

    params: np.ndarray
    tasks: list
    record: RoundRecord


@dataclass
class Clock:
    """An attempt's arrivals on the simulated clock: when the last accepted result came, whether one was
    late, and whether over-selection has filled the round (`target` accepted results)."""

    target: int | None
    last: float = 0.0
    late: bool = False
    full: bool = False
    overselected: int = 0


class Synchronous(RoundLoop):
    """Synchronous rounds of a strategy over an engine (see the module docstring)."""

    rounds_of_updates = True

    def __init__(self, strategy, engine, workload, **options):
        super().__init__(strategy, engine, workload, **options)
        self.sample_size = overselected(self.clients_per_round, self.rules.overselect)
        if self.sample_size > self.dataset.num_clients:
            raise ConfigError("server.overselect", f"asks {self.sample_size} clients of {self.dataset.num_clients}")
        self._ride: Ride | None = None  # a finished round whose central evaluation rides with the next round

    def schedule(self, params: np.ndarray, start_round: int, sim_time: float) -> np.ndarray:
        prepared = self.prepare(params) if self.strategy.prepares and start_round == 1 else None
        for rnd in range(start_round, self.rounds + 1):
            if self.over_budget(rnd):
                break
            before = self.snapshot()
            clip_norm = self.clip_norm()
            params, record = self.round_with_retries(rnd, params, sim_time)
            if prepared is not None:  # round 0's uploads and time are booked to round 1
                record.tally.bytes_up += prepared[0]
                record.tally.sim_s += prepared[1]
                record.extra.update(prepared[2])
                prepared = None
            if self._ride is not None:  # the round ran no task to carry it: evaluate on its own
                ride, self._ride = self._ride, None
                self._land(ride, self.engine.run(ride.params, ride.tasks))
            sim_time += record.tally.sim_s
            record.sim_time_s = sim_time
            record.privacy = self.privacy_figures(clip_norm, record.tally)
            if self._rides(rnd):  # its central evaluation runs with the next round's training
                record.evaluation = self.evaluator.figures(rnd, params, central=False)
                self.stamp(record, before)  # its evaluation is booked to the next round
                self._ride = Ride(params, self.evaluator.shards(), record)
                continue
            record.evaluation = self.evaluator.figures(rnd, params)
            self.close_round(record, params, before)
        return params

    def prepare(self, params: np.ndarray) -> tuple[int, float, dict] | None:
        """Round 0 of a strategy that `prepares` (coded training's parity sets): every client's task run
        once; each reply checked for its size and finite values (refused, counted and logged otherwise) and
        handed to the strategy in client order. (bytes uploaded, simulated seconds, figures), or None."""
        tasks = self.strategy.prepare_tasks(params, list(range(self.dataset.num_clients)), self.workload.seed)
        if not tasks:
            return None
        size = self.strategy.prepared_size(params)
        replies: dict[int, np.ndarray] = {}
        uploaded, seconds, refused, failed = 0, 0.0, 0, 0
        for outcome in self.engine.run(params, tasks):
            cid = outcome.task.client_id
            if outcome.error is not None:
                failed += 1
                log.warning("round 0: client %d failed: %s", cid, outcome.error)
                continue
            reply = outcome.value
            vector = reply.update if reply.update is not None else np.frombuffer(reply.payload, np.float32) \
                if len(reply.payload) % 4 == 0 else np.zeros(0, np.float32)
            if vector.size != size or not np.all(np.isfinite(vector)):
                refused += 1
                log.warning("round 0: client %d sent %d values (%s), expected %d finite ones: refused", cid,
                            vector.size, "finite" if np.all(np.isfinite(vector)) else "not finite", size)
                continue
            replies[cid] = vector
            uploaded += len(reply.payload)
            device = self.system.device(cid)
            seconds = max(seconds, device.task_seconds(reply.num_examples, 0, len(reply.payload)))
        self.strategy.prepared([replies[cid] for cid in sorted(replies)])
        return uploaded, seconds, {"parity_bytes_up": uploaded, "parity_clients": len(replies),
                                   "parity_refused": refused, "parity_failed": failed,
                                   **self.strategy.prepared_figures()}

    def _rides(self, rnd: int) -> bool:
        """Whether round `rnd`'s central evaluation can run in the same engine batch as round `rnd + 1`'s
        training: that round trains from the very vector it evaluates, and nothing that a checkpoint
        keeps (strategy or sampler state, privacy ledgers) changes before the evaluation lands."""
        ev = self.evaluator
        return (self.engine.parallel and rnd < self.rounds and bool(ev.plan.every) and rnd % ev.plan.every == 0
                and not ev.federated_due(rnd) and not self.aggregator.sums and not self.download.stages
                and not self.strategy.stateful and not self.strategy.broadcasts
                and not any(t.stateful for t in self.transforms)
                and not self.sampler.stateful and self.record_ledger is None and not self.rules.epsilon_budget)

    def _land(self, ride: Ride, outcomes) -> None:
        """The riding evaluation is back: complete its round's record and close that round."""
        ride.record.evaluation.update(test_figures(evaluation.total(outcomes), self.evaluator.plan.finish_metrics))
        ride.record.wall_time_s = time.perf_counter() - self.started
        self.publish(ride.record.row(), ride.params)

    def _with_ride(self, outcomes: Iterable[Outcome]) -> Iterator[Outcome]:
        """The round's own outcomes, after landing the evaluation that rode in front of them."""
        ride, self._ride = self._ride, None
        outcomes = iter(outcomes)
        if ride is not None:
            self._land(ride, [next(outcomes) for _ in ride.tasks])
        yield from outcomes

    def round_with_retries(self, rnd: int, params: np.ndarray, start: float = 0.0) -> tuple[np.ndarray, RoundRecord]:
        """A round starting at simulated time `start`, tried again (with other clients, from when the
        failed attempt ended) while fewer than `min_clients` succeed. Counts add up over attempts,
        except `clients` and `partial`: those of the attempt that counted (or the last)."""
        total = Tally()
        for attempt in range(self.rules.round_retries + 1):
            before = self.save_state()
            new_params, tally, figures = self.round(rnd, params, attempt, start + total.sim_s)
            total.add(tally)
            if tally.clients >= self.rules.min_clients:
                if tally.states:
                    self.client_states.put(rnd, tally.states)
                break
            self.restore_state(before)  # an attempt that did not count leaves no trace
            log.warning("round %d: %d successful clients < server.min_clients=%d; %s", rnd, tally.clients,
                        self.rules.min_clients, "retrying" if attempt < self.rules.round_retries else
                        "global model kept")
        total.clients, total.partial, total.dp_clients = tally.clients, tally.partial, tally.dp_clients
        total.client_metrics = tally.client_metrics  # the attempt that counted
        return new_params, RoundRecord(rnd, total, attempts=attempt + 1, train_loss=mean_train_loss(tally.losses),
                                       fit_metrics=self.fit_figures(tally), extra=figures)

    def round(self, rnd: int, params: np.ndarray, attempt: int = 0,
              start: float = 0.0) -> tuple[np.ndarray, Tally, dict]:
        """One attempt of a training round at simulated time `start`: the new params (unchanged below
        `min_clients`), the attempt's tally (`sim_s`: how long it took) and its parts' figures."""
        tally = Tally()
        now, waited = self._wait_for_online(rnd, start)
        ids = self.sampler.sample(rnd, self.sample_size, attempt, now=now)
        tally.sampled = len(ids)
        sent, download = self.downloaded(rnd, params)
        # each client receives its own of the stacked models (before a split adds one), or all that was sent
        share = self.strategy.models if self.strategy.sends_own_model else 1
        tasks, reached = self._tasks(rnd, attempt, params, ids, now, (download, sent.size), tally)
        collection = self.aggregator.open(self.filters, tally, rnd, attempt, reached, self.engine,
                                          self.workload.seed)
        tasks, reached = collection.tasks(tasks if collection.opened else [], reached)
        clock = Clock(self.clients_per_round if self.rules.overselect > 0 else None)
        updates = self._updates(rnd, sent, download, tasks, collection, clock)
        if self.profile is None:
            new_params = self.aggregate(rnd, params, updates)
        else:  # aggregation is what the call takes beyond waiting for the engine and decoding
            before, started = self.profile.snapshot(), time.perf_counter()
            new_params = self.aggregate(rnd, params, updates)
            spent = self.profile.since(before)
            self.profile.aggregate_s += time.perf_counter() - started - spent.wait_s - spent.decode_s
        figures = {**collection.figures(), **self.strategy.round_figures()}
        if tally.clients >= self.rules.min_clients:
            figures.update(self.contribution_figures(rnd, params))
        else:
            new_params = params
        tally.overselected = clock.overselected
        tally.bytes_down = download * len(reached) // share + collection.bytes_down
        tally.bytes_down_raw = sent.nbytes * len(reached) // share
        tally.sim_s = waited + max(clock.last if clock.full or not clock.late else self.rules.deadline_s,
                                   self.strategy.server_seconds(rnd))  # the server works while it waits
        return np.ascontiguousarray(new_params, dtype=np.float32), tally, figures

    def _tasks(self, rnd: int, attempt: int, params: np.ndarray, ids: list[int], now: float,
               sizes: tuple[int, int], tally: Tally) -> tuple[list, list[int]]:
        """(the tasks to run, the clients that receive the model): the strategy's tasks of the sampled
        clients that are online and do not drop out, seeded, cut to the deadline (partial work),
        poisoned (a simulated attack) and carrying their client's state (where the server keeps it)."""
        tasks, reached = [], []
        for task in self.configure(rnd, params, ids):
            cid = task.client_id
            if not self.system.online(cid, now):
                tally.fail("unavailable")
                continue
            reached.append(cid)  # it receives the global model
            if self.system.drops(rnd, attempt, cid):
                tally.fail("dropout")
                continue
            task = replace(task, config=replace(task.config, seed=int_seed(self.workload.seed, "client", rnd, cid)))
            if self.rules.partial_work:
                fitted = self.fit_deadline(task, *sizes)
                if fitted is None:  # not even one step fits: it cannot be on time
                    tally.fail("deadline")
                    continue
                if fitted is not task:
                    tally.partial_ids.add(cid)
                task = fitted
            tasks.append(task)
        if self.attack is not None:  # simulation: malicious clients' tasks (data attacks train on flipped labels)
            tasks = [self.attack.task(t) for t in tasks]
        if self.keeps_state:
            tasks = [replace(t, state=self.client_state(t.client_id, params)) for t in tasks]
        kinds = tally.failures_by_kind
        if kinds["unavailable"] or kinds["dropout"] or kinds["deadline"]:
            log.info("round %d: %d sampled, %d offline, %d dropped out, %d cannot finish a step by the deadline",
                     rnd, len(ids), kinds["unavailable"], kinds["dropout"], kinds["deadline"])
        return tasks, reached

    def _arrival(self, outcome: Outcome, download: int) -> float:
        """Seconds after the attempt's start at which a client's result reaches the server."""
        work = outcome.task.config.samples(outcome.value.num_examples)
        return self.system.device(outcome.task.client_id).task_seconds(work, download, len(outcome.value.payload))

    def _updates(self, rnd: int, sent: np.ndarray, download: int, tasks: list, collection: Collection,
                 clock: Clock) -> Iterator[ClientUpdate]:
        """The attempt's updates as the strategy aggregates them: every result in time, through the filters
        and the aggregator (the engine runs a riding central evaluation in the same batch)."""
        riding = self._ride.tasks if self._ride is not None and not self.aggregator.sums else []
        outcomes: Iterable[Outcome] = self._with_ride(self.engine.run(sent, [*riding, *tasks]))
        if clock.target is not None:  # the first K to arrive: every result is in before one is judged
            outcomes = sorted(outcomes, key=lambda o: -1.0 if o.error is not None else self._arrival(o, download))
        tally = collection.tally
        for outcome in outcomes:
            if outcome.error is not None:
                tally.fail("error")
                log.warning("round %d: client %d failed: %s", rnd, outcome.task.client_id, outcome.error)
                continue
            if clock.full:
                clock.overselected += 1
                continue
            seconds = self._arrival(outcome, download)
            if self.rules.deadline_s and seconds > self.rules.deadline_s:
                tally.fail("deadline")
                clock.late = True
                self.sampler.observe(rnd, outcome.task.client_id, duration_s=seconds)
                log.info("round %d: client %d arrives after %.3g s, past the deadline of %.3g s",
                         rnd, outcome.task.client_id, seconds, self.rules.deadline_s)
                continue
            update = collection.take(outcome, self.strategy.update_size(sent.size))
            if update is not None:
                update = self.filters.account(rnd, update, outcome.task.config, tally)
            if update is not None:
                self.sampler.observe(rnd, update.client_id, num_examples=update.num_examples,
                                     loss=update.metrics.get("train_loss"), duration_s=seconds)
                clock.last = max(clock.last, seconds)
                clock.full = clock.target is not None and tally.clients >= clock.target
                yield from collection.add(update, outcome.value.state if self.keeps_state else None)
        yield from collection.close()

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
