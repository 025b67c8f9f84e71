"""The asynchronous loop: clients train all the time, the server updates as results arrive (FedBuff, FedAsync).

It runs as a discrete-event simulation on the simulated clock of the fleet (`systems.py`):

1. `server.concurrency` clients are training at any time. A free slot is filled at once: the
   sampler draws among the clients not already training (`exclude`), each drawn client receives
   the current global model (its *version*) and starts at the current simulated time. A drawn
   client that is offline fails as "unavailable" and another is drawn (no time passes: an offline
   device never answers), until every client has been tried. When nothing is training and no client
   is online, the server idles until one is; while some train, free slots are filled again at the
   next event.
2. Each started client ends in one event: its result arrives after `DeviceProfile.task_seconds`
   (download of its version, its local work, upload of its real encoded payload); or it drops out
   (the fleet's `dropout`) a uniformly drawn fraction of the way through its planned task, and the
   server sees the lost connection then; or, with `deadline_s`, the server gives up on it when the
   deadline passes ("deadline": a per-task timeout here; with `partial_work` a client whose full
   work would not fit is asked for the local steps that do, as in the synchronous loop).
3. Events are handled in time order (ties: in the order the clients started). An accepted result
   goes into the buffer with its staleness τ = server updates since it received its model; when
   the buffer holds `server.buffer_size` updates the strategy aggregates them into the next version.
   That is one "round" of the records: `server.rounds` counts server updates, and each record
   gathers what happened since the previous update (clients started, failures, bytes).

Training happens lazily, in batches: a started client's outcome is only needed when its event
could be the next one. Its earliest possible event time (download + compute, or its deadline) is
known before training, so the loop trains every waiting client — all of them at once on the
engine, grouped by version — only when one of those bounds is not later than the earliest known
event. What a client computes depends only on its version, its seed and its data, so results are
the same on every engine and whatever the batching.

Random choices come from the run seed: the sampler's draws keyed by (version, fill), the client's
training seed by (version, client, start number), dropouts by (version, start number, client).
A resumed run continues from its last update with nothing in flight (its clients start afresh),
so it is deterministic but not bit-identical to a run that never stopped.

Updates pass the loop's filters (`loop.filters`) as in the synchronous schedule, each as it arrives. There is no
round to take a median norm over: with `max_norm_ratio` an update is judged against the median norm of
itself and the last max(buffer_size, clients_per_round) updates that arrived before it. A simulated
attack replaces a malicious client's update as it arrives (only the attacks that need no other update).
"""

from __future__ import annotations

import heapq
import logging
import math
from collections import deque
from dataclasses import dataclass, replace

import numpy as np

from ..engine import Outcome
from ..errors import ConfigError, FedstackError
from ..seeding import int_seed
from ..strategy import ClientUpdate, Task
from .core import RoundLoop
from .record import RoundRecord, Tally, mean_train_loss

log = logging.getLogger("fedstack.async")


@dataclass
class Flight:
    """A client that was started: its task, the version it trains from, when it started and ends."""

    task: Task
    version: int
    start: float
    seq: int  # start number: orders events that happen at the same time
    work: int  # samples it trains on
    earliest: float  # its event cannot happen before this time
    partial: bool = False  # asked for fewer local steps to meet the deadline
    kind: str = "result"  # what its event is: result, error, dropout or deadline
    outcome: Outcome | None = None
    at: float = math.inf  # when its event happens, once known


class Asynchronous(RoundLoop):
    """Asynchronous server updates of a strategy (FedBuff, FedAsync) over an engine (see the module docstring).

    Takes the loop's options; of `Rules`, not `overselect` or `min_clients`, which belong to rounds, and
    `concurrency` (clients training at once; 0 = 2 × clients_per_round) and `buffer_size` (updates per
    server step; 0 = clients_per_round, or 1 for a strategy without `buffered`).
    """

    asynchronous = True

    def __init__(self, strategy, engine, workload, **options):
        rules = options.get("rules")
        if rules is not None and rules.overselect:
            raise ConfigError("server.overselect", "over-selection belongs to synchronous rounds; an asynchronous "
                              "strategy keeps server.concurrency clients busy instead")
        super().__init__(strategy, engine, workload, **options)
        if self.aggregator.synchronous_only and self.aggregator.sums:
            raise ConfigError("codec.pipeline", "secure aggregation needs a round of clients to sum; the "
                              "asynchronous loop aggregates updates as they arrive")
        self.concurrency = self.rules.concurrency or 2 * self.clients_per_round
        if self.concurrency > self.dataset.num_clients:
            raise ConfigError("server.concurrency", f"asks {self.concurrency} clients at once of "
                              f"{self.dataset.num_clients}")
        self.buffer_size = self.rules.buffer_size or (self.clients_per_round if strategy.buffered else 1)
        if self.attack is not None and self.attack.colludes:
            raise ConfigError("attack.name", f"{self.attack.name} crafts its update from the honest updates of a "
                              "round; the asynchronous loop has no rounds of updates")
        self.recent_norms: deque = deque(maxlen=max(self.buffer_size, self.clients_per_round))

    def schedule(self, params: np.ndarray, start_round: int, sim_time: float) -> np.ndarray:
        """Train from `params` until `rounds` server updates are done; returns the final params."""
        self.params = params
        self.version = start_round - 1
        self.now = sim_time
        self.models: dict[int, tuple[np.ndarray, np.ndarray, int]] = {}  # version → (params, sent, bytes down)
        self.flights: dict[int, Flight] = {}  # client id → its flight
        self.waiting: list[Flight] = []  # started, not yet trained
        self.events: list[tuple[float, int, int]] = []  # (time, seq, client id) of flights whose event is known
        self.buffer: list[ClientUpdate] = []
        self.starts = self.fills = 0
        self.tally = Tally()  # what happened since the last server update
        self._profiled = self.snapshot()
        stalls = 0
        self._fill()
        while self.version < self.rounds and not self.over_budget(self.version + 1):
            flight = self._next_event()
            if flight is None:  # nothing is training: wait for a client to come online
                later = self.system.next_online(self.now, self.dataset.num_clients)
                stalls = stalls + 1 if later <= self.now else 0
                if not math.isfinite(later) or stalls > 10:
                    raise FedstackError(f"at t={self.now:.0f} s no client can be started (none online, "
                                        "nor will be; or none can finish a step before the deadline)")
                self.now = later
            else:
                self._settle(flight)
                if len(self.buffer) >= self.buffer_size:
                    self._update()
            self._fill()
        return self.params

    def _model(self, version: int) -> tuple[np.ndarray, np.ndarray, int]:
        """(params, what clients receive, its bytes on the wire) of `version`, made once per version."""
        if version not in self.models:
            self.models[version] = (self.params, *self.downloaded(version + 1, self.params))
        return self.models[version]

    def _fill(self) -> None:
        """Start clients until `concurrency` are training, or until no client left to draw could start."""
        n = self.dataset.num_clients
        if not self.system.any_online(self.now, n):
            return
        skipped: set[int] = set()  # drawn in this fill and found offline, or too slow for the deadline
        while len(self.flights) < self.concurrency:
            k = min(self.concurrency - len(self.flights), n - len(self.flights) - len(skipped))
            ids = self._draw(k, sorted(skipped.union(self.flights))) if k > 0 else []
            if not ids:
                return
            for cid in ids:
                if not self.system.online(cid, self.now):
                    self.tally.fail("unavailable")
                    skipped.add(cid)
                elif not self._start(cid):
                    skipped.add(cid)

    def _draw(self, k: int, exclude: list[int]) -> list[int]:
        self.fills += 1
        rnd = self.version + 1
        return self.sampler.sample(rnd, k, self.fills, now=self.now, exclude=exclude)

    def _start(self, cid: int) -> bool:
        """Send client `cid` the current model and schedule what it will do; False if it cannot
        finish one local step before the deadline (then it is not started)."""
        seed, rnd = self.workload.seed, self.version + 1
        self.starts += 1
        _, sent, download = self._model(self.version)
        task = self.configure(rnd, self.params, [cid])[0]
        task = replace(task, config=replace(task.config, seed=int_seed(seed, "client", rnd, cid, self.starts)))
        if self.attack is not None:
            task = self.attack.task(task)
        self.tally.sampled += 1
        self.tally.bytes_down += download
        self.tally.bytes_down_raw += sent.nbytes
        fitted = self.fit_deadline(task, download, sent.size) if self.rules.partial_work else task
        if fitted is None:  # not even one step fits before the deadline
            self.tally.fail("deadline")
            return False
        partial, task = fitted is not task, fitted
        if self.keeps_state:
            task = replace(task, state=self.client_states.get(cid))
        device = self.system.device(cid)
        work = task.config.samples(len(self.dataset.train_idx[cid]))
        compute_done = self.now + device.task_seconds(work, download, 0)
        earliest = min(compute_done, self.now + self.rules.deadline_s) if self.rules.deadline_s else compute_done
        flight = Flight(task, self.version, self.now, self.starts, work, earliest, partial)
        self.flights[cid] = flight
        point = self.system.drop_point(rnd, self.starts, cid)
        if point is not None:  # it drops out part of the way through its planned task
            planned = device.task_seconds(work, download, 4 * sent.size)
            self._schedule(flight, "dropout", self.now + point * planned)
        else:
            self.waiting.append(flight)
        return True

    def _schedule(self, flight: Flight, kind: str, at: float) -> None:
        if self.rules.deadline_s and at > flight.start + self.rules.deadline_s:
            kind, at = "deadline", flight.start + self.rules.deadline_s
        flight.kind, flight.at = kind, at
        heapq.heappush(self.events, (at, flight.seq, flight.task.client_id))

    def _next_event(self) -> Flight | None:
        """The flight whose event comes next (training waiting clients first if one of them might)."""
        while self.waiting and (not self.events or min(f.earliest for f in self.waiting) <= self.events[0][0]):
            self._train_waiting()
        if not self.events:
            return None
        at, _, cid = heapq.heappop(self.events)
        self.now = at
        return self.flights.pop(cid)

    def _train_waiting(self) -> None:
        """Train every waiting client on the engine, one batch per version, and schedule their events."""
        waiting, self.waiting = self.waiting, []
        for version in sorted({f.version for f in waiting}):
            group = [f for f in waiting if f.version == version]
            _, sent, download = self.models[version]
            for flight, outcome in zip(group, self.engine.run(sent, [f.task for f in group])):
                flight.outcome = outcome
                device = self.system.device(flight.task.client_id)
                if outcome.error is not None:
                    self._schedule(flight, "error", flight.start + device.task_seconds(flight.work, download, 0))
                else:
                    seconds = device.task_seconds(flight.work, download, len(outcome.value.payload))
                    self._schedule(flight, "result", flight.start + seconds)

    def _settle(self, flight: Flight) -> None:
        """Count a flight's event; an accepted result goes into the buffer."""
        cid, rnd = flight.task.client_id, self.version + 1
        if flight.kind == "result":
            update = self._filtered(flight)
            if update is not None:
                update.staleness = self.version - flight.version
                update.base = self.models[flight.version][0]
                self.buffer.append(update)
                if flight.partial:
                    self.tally.partial_ids.add(cid)
                self.tally.keep(update, flight.outcome.value.state if self.keeps_state else None)
                self.sampler.observe(rnd, cid, num_examples=update.num_examples,
                                     loss=update.metrics.get("train_loss"), duration_s=self.now - flight.start)
        else:
            self.tally.fail(flight.kind)
            if flight.kind == "error":
                log.warning("update %d: client %d failed: %s", rnd, cid, flight.outcome.error)
            if flight.kind == "deadline":
                self.sampler.observe(rnd, cid, duration_s=self.now - flight.start)
        self._forget_old_models()

    def _filtered(self, flight: Flight) -> ClientUpdate | None:
        """A result through the loop's filters (the norm screen judged against the recent updates' norms)."""
        rnd, size = self.version + 1, self.models[flight.version][1].size
        update = self.filters.accept(flight.outcome, size, self.tally)
        if update is not None:
            update = self.filters.account(rnd, update, flight.task.config, self.tally)
        if update is not None:
            passed = self.filters.screen(rnd, [update], size, self.tally, self.recent_norms)
            update = passed[0] if passed else None
        return update

    def _forget_old_models(self) -> None:
        """Drop versions no client trains from any more (the buffer keeps the bases it needs)."""
        needed = {f.version for f in self.flights.values()} | {self.version}
        for version in [v for v in self.models if v not in needed]:
            del self.models[version]

    def _update(self) -> None:
        """Aggregate the buffer into the next version; record, evaluate, report it."""
        rnd = self.version + 1
        clip_norm = self.clip_norm()
        staleness = [u.staleness for u in self.buffer]
        new = self.aggregate(rnd, self.params, iter(self.buffer))
        self.params = np.ascontiguousarray(new, dtype=np.float32)
        self.version = rnd
        tally, self.tally = self.tally, Tally()
        if tally.states:
            self.client_states.put(rnd, tally.states)
        record = RoundRecord(rnd, tally, sim_time_s=self.now, train_loss=mean_train_loss(tally.losses),
                             fit_metrics=self.fit_figures(tally),
                             extra={**self.strategy.round_figures(), "staleness_mean": float(np.mean(staleness)),
                                    "staleness_max": int(max(staleness))})
        record.privacy = self.privacy_figures(clip_norm, tally)
        self.buffer = []
        self._forget_old_models()
        record.evaluation = self.evaluator.figures(rnd, self.params)
        self.close_round(record, self.params, self._profiled)
        self._profiled = self.snapshot()
