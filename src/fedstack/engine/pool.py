"""PoolEngine: worker processes started once per run, sharing the dataset and the global vector."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import threading
from collections import deque
from dataclasses import dataclass, replace
from multiprocessing import resource_tracker
from multiprocessing.connection import wait
from multiprocessing.shared_memory import SharedMemory
from typing import Iterator

import numpy as np

from .base import Engine, Outcome, Workload, execute, longest_first

# A task whose worker process dies is retried on a fresh worker this many times.
MAX_ATTEMPTS = 3


@dataclass(frozen=True)
class _Shared:
    """How a worker finds an array in shared memory."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    def attach(self) -> tuple[SharedMemory, np.ndarray]:
        # Spawned workers share the parent's resource tracker, so attaching here adds no cleanup
        # duty: the parent, which created the segment, unlinks it.
        shm = SharedMemory(name=self.name)
        return shm, np.ndarray(self.shape, np.dtype(self.dtype), buffer=shm.buf)


def _share(array: np.ndarray) -> tuple[SharedMemory, _Shared]:
    shm = SharedMemory(create=True, size=max(array.nbytes, 1))
    np.ndarray(array.shape, array.dtype, buffer=shm.buf)[...] = array
    return shm, _Shared(shm.name, tuple(array.shape), array.dtype.str)


def start_method() -> str:
    """How to start workers: fork where it is safe, spawn elsewhere.

    A forked worker starts in milliseconds with torch already imported, where a spawned one
    spends 1.5–2 s importing it. Forking is safe on Linux from a process with no other Python
    thread (a thread holding a lock at the fork would leave it held forever in the child); torch's
    own thread pools are not used in a worker, which runs on one thread. macOS's system libraries
    are not fork-safe, so it spawns, as Python does there by default.
    """
    return "fork" if sys.platform == "linux" and threading.active_count() == 1 else "spawn"


def _worker_main(conn, workload: Workload, arrays: dict[str, _Shared], inherited: tuple[int, ...] = ()) -> None:
    """A worker: attach the shared data once, build one Trainer, then run tasks until told to stop.

    `inherited` are the parent's ends of the workers' pipes that a forked child holds copies of;
    closing them lets each worker see end-of-file when the parent dies.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    for fd in inherited:
        os.close(fd)
    try:
        try:
            import torch
        except ImportError:  # fedstack without the torch extra: a NumPy model's workers
            pass
        else:
            torch.set_num_threads(1)
        attached = {k: ref.attach() for k, ref in arrays.items()}
        dataset = replace(workload.dataset, **{k: view for k, (_, view) in attached.items()})
        workload = replace(workload, dataset=dataset)
        trainer = workload.trainer_factory()
    except Exception as exc:  # tell the parent why, instead of dying silently
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    shared_params: dict[int, tuple[SharedMemory, np.ndarray]] = {}  # by length: the model, or a broadcast
    params, version = None, -1
    conn.send("ready")
    while True:
        try:
            message = conn.recv()
        except EOFError:  # the parent is gone
            return
        if message is None:
            return
        if isinstance(message, _Shared):  # where global vectors of this length will be published
            shared_params[message.shape[0]] = message.attach()  # keep the segment open with its view
            continue
        index, task_version, size, task = message
        if task_version != version:  # a new global vector: copy it once, not per task
            params, version = shared_params[size][1].copy(), task_version
        conn.send((index, execute(trainer, workload, task, params)))


class _Worker:
    def __init__(self, ctx, args, siblings: list[_Worker]):
        self.conn, child = ctx.Pipe()
        forked = ctx.get_start_method() == "fork"
        inherited = tuple(w.conn.fileno() for w in [*siblings, self]) if forked else ()
        self.process = ctx.Process(target=_worker_main, args=(child, *args, inherited), daemon=True)
        self.process.start()
        child.close()
        self.ready = False
        self.task: int | None = None


def _send(worker: _Worker, message) -> None:
    """Send to a worker that may have died; its death is noticed (and handled) where the pool waits."""
    try:
        worker.conn.send(message)
    except (BrokenPipeError, OSError):
        pass


class PoolEngine(Engine):
    """Runs tasks on `workers` processes (default: one per core), each with one torch thread.

    The dataset's arrays exist once: forked workers share the parent's pages, spawned ones map a
    shared-memory copy. Each round's global vector is written once to shared memory; a task
    message carries only client id and config (and the client's state, for strategies that keep
    one). The longest tasks start first; results come back in task order. A task whose worker
    dies is rerun on a fresh worker. Workers are forked where that is safe and spawned elsewhere
    (`start_method()`); results are the same bits either way.
    """

    client_state = "task"
    parallel = True  # runs several tasks at once: a round's evaluation can share a batch with the next round

    def __init__(self, workers: int = 0, start_method: str | None = None):
        self.workers = workers or os.cpu_count() or 1
        self.start_method = start_method  # fork | spawn; None: fork where safe (see `start_method()`)
        self._pool: list[_Worker] = []
        self._segments: list[SharedMemory] = []

    def start(self, workload: Workload) -> None:
        self._ctx = mp.get_context(self.start_method or start_method())
        refs = {}
        if self._ctx.get_start_method() == "fork":  # forked workers share the parent's pages of the arrays
            self._workload = workload
            # Forked workers must share this process's tracker of shared memory: one they started
            # themselves would unlink the global vector's segment when they exit.
            resource_tracker.ensure_running()
        else:  # spawned ones get the partitions by pickle and the arrays from shared memory
            for key, array in workload.dataset.arrays().items():
                shm, refs[key] = _share(np.ascontiguousarray(array))
                self._segments.append(shm)
            light = replace(workload.dataset, **{k: np.zeros((0,) + a.shape[1:], a.dtype)
                                                 for k, a in workload.dataset.arrays().items()})
            self._workload = replace(workload, dataset=light)
        self._refs = refs
        self._params: dict[int, tuple[SharedMemory, _Shared]] = {}
        self._version = 0
        self._pool = []
        for _ in range(self.workers):  # they start up while the caller prepares
            self._pool.append(self._spawn())

    def _publish(self, params: np.ndarray) -> None:
        """Write the global vector to shared memory: one segment per length (model, broadcast)."""
        size = params.size
        if size not in self._params:
            shm, ref = _share(params.astype(np.float32))
            self._segments.append(shm)
            self._params[size] = (shm, ref)
            for w in self._pool:
                _send(w, ref)
        shm, ref = self._params[size]
        np.ndarray(ref.shape, np.float32, buffer=shm.buf)[...] = params
        self._version += 1

    def _spawn(self) -> _Worker:
        worker = _Worker(self._ctx, (self._workload, self._refs), [w for w in self._pool if not w.conn.closed])
        for _, ref in self._params.values():
            _send(worker, ref)
        return worker

    def run(self, params: np.ndarray, tasks: list) -> Iterator[Outcome]:
        """Yields one Outcome per task, in task order."""
        self._publish(params)
        pending = deque(longest_first(tasks, self._workload.dataset))
        attempts = [0] * len(tasks)
        done: dict[int, Outcome] = {}
        next_out = 0
        try:
            while next_out < len(tasks):
                for w in self._pool:
                    if w.ready and w.task is None and pending:
                        w.task = pending.popleft()
                        attempts[w.task] += 1
                        _send(w, (w.task, self._version, params.size, tasks[w.task]))
                while next_out in done:
                    yield done.pop(next_out)
                    next_out += 1
                if next_out < len(tasks):
                    self._collect(done, pending, attempts, tasks)
        except GeneratorExit:  # the consumer stopped early: let running tasks finish first
            self._drain()
            raise

    def _collect(self, done, pending, attempts, tasks) -> None:
        """Wait for any worker to answer or die, and book what happened."""
        by_handle = {}
        for w in self._pool:
            by_handle[w.conn] = w
            by_handle[w.process.sentinel] = w
        for handle in wait(list(by_handle)):
            w = by_handle[handle]
            if handle is w.conn:
                try:
                    message = w.conn.recv()
                except (EOFError, OSError):
                    continue  # the sentinel reports the death
                if message == "ready":
                    w.ready = True
                elif message[0] == "failed":
                    raise RuntimeError(f"a pool worker could not start: {message[1]}")
                else:
                    index, outcome = message
                    done[index] = outcome
                    w.task = None
            elif not w.process.is_alive():
                self._replace(w, done, pending, attempts, tasks)

    def _replace(self, dead: _Worker, done, pending, attempts, tasks) -> None:
        if not dead.ready:  # dying while starting is a broken set-up, not bad luck: stop here
            reason = dead.conn.recv()[1] if dead.conn.poll() else f"exit code {dead.process.exitcode}"
            raise RuntimeError(f"a pool worker could not start: {reason}")
        index = dead.task
        if index is not None:
            if attempts[index] < MAX_ATTEMPTS:
                pending.appendleft(index)
            else:
                done[index] = Outcome(tasks[index], error=f"worker died {attempts[index]} times running it")
        dead.conn.close()
        self._pool[self._pool.index(dead)] = self._spawn()

    def _drain(self) -> None:
        """Wait for tasks still running (a consumer that stopped early) so the next round starts clean."""
        while any(w.task is not None for w in self._pool):
            busy = [w for w in self._pool if w.task is not None]
            for handle in wait([w.conn for w in busy] + [w.process.sentinel for w in busy]):
                w = next(x for x in busy if handle in (x.conn, x.process.sentinel))
                if w.task is None:
                    continue
                try:
                    w.conn.recv()
                    w.task = None
                except (EOFError, OSError):
                    w.conn.close()
                    self._pool[self._pool.index(w)] = self._spawn()

    def close(self) -> None:
        for w in self._pool:
            try:
                w.conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        for w in self._pool:
            w.process.join(timeout=5)
            if w.process.is_alive():
                w.process.kill()
        self._pool = []
        for shm in self._segments:
            shm.close()
            shm.unlink()
        self._segments = []
