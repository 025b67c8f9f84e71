"""RayEngine: long-lived Ray actors, one Trainer each, fed from Ray's object store (one machine or a cluster)."""

from __future__ import annotations

import os
from collections import deque
from dataclasses import replace
from typing import Iterator

import numpy as np

from ..errors import ConfigError
from .base import Engine, Outcome, Workload, execute, longest_first

# A task whose actor dies is retried on a fresh actor this many times (as PoolEngine does).
MAX_ATTEMPTS = 3
# Tasks queued on one actor: the next one is already there when the current one ends.
DEPTH = 2
# How long the other tasks of a dead actor may take to report (they end with it, normally at once).
LOST_WAIT_S = 30.0


class _Worker:
    """A Ray actor's body: one Trainer and the data, kept for the whole run."""

    def __init__(self, workload: Workload, arrays: dict[str, np.ndarray]):
        import sys
        import warnings

        import ray

        self.node = ray.util.get_node_ip_address()
        self.failure = None
        self.params, self.version = None, None
        try:
            # The object store's arrays are read-only views; torch only reads them.
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            self.workload = replace(workload, dataset=replace(workload.dataset, **arrays))
            self.trainer = workload.trainer_factory()
            # One thread, as LocalEngine and the pool workers: the same bits. Set after the factory, so
            # that a trainer without torch does not wait for its import (Ray's OMP_NUM_THREADS=1 holds
            # until then).
            if "torch" in sys.modules:
                sys.modules["torch"].set_num_threads(1)
        except Exception as exc:  # reported with the first task, so the driver can say why
            self.failure = f"{type(exc).__name__}: {exc}"

    def run(self, box: list, task) -> tuple[str, Outcome]:
        """Run one task against the global vector in `box` (an object ref, fetched once per run)."""
        if self.failure is not None:
            raise _StartFailed(self.failure)
        import ray

        ref = box[0]
        if ref != self.version:  # a new global vector: copy it out of the store once, not per task
            self.params, self.version = np.array(ray.get(ref)), ref
        return self.node, execute(self.trainer, self.workload, task, self.params)


class _StartFailed(Exception):
    """An actor could not build its Trainer or data; the message says why."""


class RayEngine(Engine):
    """Runs tasks on Ray actors: a local Ray of `workers` CPUs, or the cluster at `address`.

    One actor per worker (one CPU, one torch thread) holds one Trainer for the whole run.
    The dataset's arrays go into Ray's object store once per run and the global vector once
    per `run` call; a task message carries only the task. The longest tasks start first. A task
    whose actor dies (killed, out of memory, node lost) is rerun on a fresh actor, at most
    MAX_ATTEMPTS times.
    `tasks_by_node` counts the tasks each node (by IP address) ran since `start`.
    """

    client_state = "task"
    parallel = True  # runs several tasks at once: a round's evaluation can share a batch with the next round

    def __init__(self, workers: int = 0, address: str = ""):
        self.workers = workers
        self.address = address
        self.tasks_by_node: dict[str, int] = {}
        self._actors: list = []
        self._owns_ray = False

    def start(self, workload: Workload) -> None:
        try:
            import ray
        except ImportError:
            raise ConfigError("engine.name", "\"ray\" needs Ray: pip install 'fedstack[ray]'") from None
        if not ray.is_initialized():
            quiet = {"log_to_driver": False, "logging_level": "warning"}
            if self.address:
                ray.init(address=self.address, **quiet)
            else:
                ray.init(num_cpus=self.workers or os.cpu_count() or 1, include_dashboard=False, **quiet)
            self._owns_ray = True
        cpus = int(ray.cluster_resources().get("CPU", 0))
        count = self.workers or max(1, cpus)
        if count > cpus:  # actors beyond the CPUs would never start, and their tasks never end
            raise ConfigError("engine.workers", f"{count} workers of one CPU each, but the Ray cluster "
                              f"{self.address or 'started here'} has {cpus} CPUs")
        arrays = {k: np.ascontiguousarray(a) for k, a in workload.dataset.arrays().items()}
        # Actors get the partitions with the workload and the arrays as views into the object store.
        light = replace(workload.dataset, **{k: a[:0] for k, a in arrays.items()})
        self._workload = ray.put(replace(workload, dataset=light))
        self._arrays = ray.put(arrays)
        self._remote = ray.remote(num_cpus=1, max_restarts=0, scheduling_strategy="SPREAD")(_Worker)
        self.tasks_by_node = {}
        self.workers = count
        self._dataset = light  # its partitions give each task's cost, to start the longest first
        self._actors = [self._spawn() for _ in range(count)]  # they start up while the caller prepares

    def _spawn(self):
        return self._remote.remote(self._workload, self._arrays)

    def run(self, params: np.ndarray, tasks: list) -> Iterator[Outcome]:
        """Yields one Outcome per task, in task order, each as soon as it and all before it are done."""
        import ray

        box = [ray.put(params)]  # in a list, so that actors receive the ref and fetch it once
        pending = deque(longest_first(tasks, self._dataset))
        attempts = [0] * len(tasks)
        done: dict[int, Outcome] = {}
        queues = {actor: deque() for actor in self._actors}  # per actor, its tasks' refs in order
        flights: dict = {}  # ref -> (actor, task index)
        next_out = 0
        try:
            while next_out < len(tasks):
                for depth in range(1, DEPTH + 1):  # one task per actor first, so a few tasks spread out
                    for actor in self._actors:
                        if pending and len(queues[actor]) < depth:
                            index = pending.popleft()
                            attempts[index] += 1
                            ref = actor.run.remote(box, tasks[index])
                            queues[actor].append(ref)
                            flights[ref] = (actor, index)
                while next_out in done:
                    yield done.pop(next_out)
                    next_out += 1
                if next_out < len(tasks):
                    self._collect(flights, queues, done, pending, attempts, tasks)
        except GeneratorExit:  # the consumer stopped early: let queued tasks finish first
            self._drain(flights)
            raise

    def _collect(self, flights, queues, done, pending, attempts, tasks) -> None:
        """Wait for one task to end or its actor to die, and book what happened."""
        import ray
        from ray.exceptions import RayError, RayTaskError

        [ref], _ = ray.wait(list(flights), num_returns=1)
        actor = flights[ref][0]
        try:
            self._book(ref, flights, queues, done)
        except RayTaskError as exc:
            if isinstance(exc.cause, _StartFailed):  # a broken set-up, not bad luck: stop here
                raise RuntimeError(f"a Ray worker could not start: {exc.cause}") from None
            raise
        except RayError:  # the actor died (killed, out of memory, its node lost)
            self._lost(actor, flights, queues, done, pending, attempts, tasks)

    def _book(self, ref, flights, queues, done) -> None:
        """Take a finished task's outcome (or raise the error that ended it)."""
        import ray

        node, outcome = ray.get(ref)
        actor, index = flights.pop(ref)
        queues[actor].remove(ref)
        done[index] = outcome
        self.tasks_by_node[node] = self.tasks_by_node.get(node, 0) + 1

    def _lost(self, actor, flights, queues, done, pending, attempts, tasks) -> None:
        """A dead actor's tasks: those it finished count, the one it was running is retried (or
        fails after MAX_ATTEMPTS), those it never started go back without using an attempt."""
        import ray
        from ray.exceptions import RayError

        refs = list(queues[actor])  # in the order the actor runs them
        # They all end soon, with a result or with the death; a result still on its way counts.
        ready = set(ray.wait(refs, num_returns=len(refs), timeout=LOST_WAIT_S)[0])
        running = None
        for ref in refs:
            if running is None:
                if ref in ready:
                    try:
                        self._book(ref, flights, queues, done)
                        continue
                    except RayError:
                        pass
                running = flights[ref][1]
            else:
                attempts[flights[ref][1]] -= 1
        waiting = [flights.pop(ref)[1] for ref in queues.pop(actor)]
        pending.extendleft(reversed(waiting[1:]))
        if running is not None:
            if attempts[running] < MAX_ATTEMPTS:
                pending.appendleft(running)
            else:
                done[running] = Outcome(tasks[running], error=f"worker died {attempts[running]} times running it")
        self._replace(actor, queues)

    def _replace(self, dead, queues) -> None:
        import ray

        ray.kill(dead)
        fresh = self._spawn()
        self._actors[self._actors.index(dead)] = fresh
        queues[fresh] = deque()

    def _drain(self, flights) -> None:
        """Wait for tasks still queued (a consumer that stopped early) so the next run starts clean."""
        import ray
        from ray.exceptions import RayError

        refs = list(flights)
        if refs:
            ray.wait(refs, num_returns=len(refs))
        dead = set()
        for ref in refs:
            actor = flights[ref][0]
            try:
                ray.get(ref)
            except RayError:
                dead.add(actor)
        for actor in dead:
            self._replace(actor, {})

    def close(self) -> None:
        if not self._actors and not self._owns_ray:
            return
        import ray

        for actor in self._actors:
            ray.kill(actor)
        self._actors = []
        self._workload = self._arrays = None
        if self._owns_ray:
            ray.shutdown()
            self._owns_ray = False
