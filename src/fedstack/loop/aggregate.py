"""Aggregators: how a round's accepted updates reach the strategy (TFF's aggregation factories).

- `StreamingSum` (the default): each update goes to the strategy as it arrives; the strategy's running
  weighted sum holds one vector whatever the number of clients.
- `Gather`: the round's updates are held until the last has arrived, then screened together (a norm
  bound's median, an attack that crafts its update from the honest ones) and handed on in order.
- `SecureSum`: the server sees only the sum of the round's updates — secure aggregation (SecAgg/SecAgg+,
  Bell et al. 2020) or homomorphic encryption (CKKS) — and the strategy gets one update, their mean.
  The same object runs simulated (each client's side of the protocol on its own simulated device) and
  deployed: what differs is only the engine's declared capability (`Engine.exchanges`: it reaches real
  devices that answer protocol steps).

An aggregator opens one `Collection` per attempt of a round; the round loop hands it each outcome that
arrived in time (`take`), each update that passed the filters (`add`), and asks for what is left at the
end (`close`). Both yield the updates the strategy aggregates, so aggregation streams.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Iterator

import numpy as np

from ..engine import Engine, Outcome
from ..seeding import int_seed
from ..strategy import ClientUpdate
from .filters import UpdateFilters
from .record import Tally

log = logging.getLogger("fedstack.server")


class Collection:
    """One attempt of a round as an aggregator sees it; the defaults stream every update on."""

    def __init__(self, filters: UpdateFilters, tally: Tally, rnd: int):
        self.filters, self.tally, self.round = filters, tally, rnd
        self.opened = True  # False: the aggregation could not start (the round aggregates nothing)

    @property
    def bytes_down(self) -> int:
        """Protocol bytes sent to clients beyond the model, so far."""
        return 0

    def tasks(self, tasks: list, reached: list[int]) -> tuple[list, list[int]]:
        """The fit tasks to run and the clients the model goes to (a deployed protocol adds its requests)."""
        return tasks, reached

    def take(self, outcome: Outcome, size: int) -> ClientUpdate | None:
        """A result that arrived in time, decoded and checked; None if refused."""
        return self.filters.accept(outcome, size, self.tally)

    def add(self, update: ClientUpdate, state) -> Iterator[ClientUpdate]:
        """An update that passed the filters (and its client's new state, where the server keeps it)."""
        self.tally.keep(update, state)
        yield update

    def close(self) -> Iterator[ClientUpdate]:
        """What is left once every result is in."""
        return iter(())

    def figures(self) -> dict:
        """Figures of the attempt for the round's record."""
        return {}


class Aggregator:
    """How a round's updates are combined before the strategy's step; see the module docstring.

    Traits: `sums` — the server sees only the sum, never an update (what needs individual updates —
    a norm screen, an update attack, contribution scores — is refused); `rows` — it holds the round's
    updates at once; `synchronous_only` — it needs a round of clients (the asynchronous schedule refuses it).
    """

    name = "stream"
    sums = False
    rows = False
    synchronous_only = False

    def open(self, filters: UpdateFilters, tally: Tally, rnd: int, attempt: int, cohort: list[int],
             engine: Engine, seed: int) -> Collection:
        return Collection(filters, tally, rnd)


class StreamingSum(Aggregator):
    """Each update to the strategy as it arrives (the default)."""


class _Gathered(Collection):
    def __init__(self, filters, tally, rnd):
        super().__init__(filters, tally, rnd)
        self.held: list[tuple[ClientUpdate, object]] = []
        self.size = 0

    def take(self, outcome: Outcome, size: int) -> ClientUpdate | None:
        self.size = size
        return super().take(outcome, size)

    def add(self, update: ClientUpdate, state) -> Iterator[ClientUpdate]:
        self.held.append((update, state))
        return iter(())

    def close(self) -> Iterator[ClientUpdate]:
        if not self.held:
            return
        state_of = {u.client_id: state for u, state in self.held}
        passed = self.filters.screen(self.round, [u for u, _ in self.held], self.size, self.tally)
        self.held.clear()  # from here each update lives only until the strategy has taken it
        for update in passed:
            self.tally.keep(update, state_of[update.client_id])
            yield update


class Gather(Aggregator):
    """The round's updates held until the last, screened together, then handed on in order."""

    name = "gather"
    rows = True
    synchronous_only = True

    def open(self, filters, tally, rnd, attempt, cohort, engine, seed) -> Collection:
        return _Gathered(filters, tally, rnd)


class _Summed(Collection):
    def __init__(self, filters, tally, rnd, protocol, secure, remote: bool):
        super().__init__(filters, tally, rnd)
        self.protocol, self.secure, self.remote = protocol, secure, remote
        tally.secure_aborts = 0

    @property
    def bytes_down(self) -> int:
        return self.protocol.bytes_down

    def tasks(self, tasks: list, reached: list[int]) -> tuple[list, list[int]]:
        """Deployed: the tasks of the clients the protocol's setup reached, each carrying its request
        (secagg: the masked-input request, ckks: the key id); one silent during the setup is a dropout."""
        if not self.remote:
            return tasks, reached
        requests = {t.client_id: self.protocol.request_for(t.client_id) for t in tasks}
        lost = sorted(cid for cid, request in requests.items() if request is None)
        if lost:
            self.tally.fail("dropout", len(lost))
            log.warning("round %d: clients %s dropped out during the protocol's setup (keys)", self.round, lost)
        tasks = [replace(t, protocol=requests[t.client_id]) for t in tasks if requests[t.client_id] is not None]
        return tasks, [cid for cid in reached if requests.get(cid) is not None]

    def take(self, outcome: Outcome, size: int) -> ClientUpdate | None:
        """Deployed: the client's masked input or ciphertext, handed unread to the protocol; the returned
        update carries no vector, only its client's figures (weight, metrics)."""
        if not self.remote:
            return super().take(outcome, size)
        task, reply = outcome.task, outcome.value
        self.tally.bytes_up += len(reply.payload)
        self.tally.bytes_up_raw += 4 * size
        if not self.protocol.collect(task.client_id, reply.payload, size):
            self.filters.reject(task.round, task.client_id, "protocol",
                                "the secure round refused its protected update", self.tally)
            return None
        self.tally.clients += 1
        return ClientUpdate(task.client_id, np.empty(0, dtype=np.float32), reply.num_examples, reply.metrics)

    def add(self, update: ClientUpdate, state) -> Iterator[ClientUpdate]:
        self.tally.keep(update, state)
        if not self.remote:  # the client's simulated device masks it; the server will see only the sum
            self.protocol.submit(update.client_id, update.update)
        return iter(())

    def close(self) -> Iterator[ClientUpdate]:
        """Unmasking (ckks: the key holder's decryption): one update, the mean of the survivors' (nothing if
        it aborts)."""
        from ..secagg import SecAggAbort

        if not self.tally.clients:
            return
        try:
            total, members = self.protocol.finish()
        except (SecAggAbort, ValueError) as exc:
            log.warning("round %d: secure aggregation aborted, nothing aggregated: %s", self.round, exc)
            self.tally.clients = 0
            self.tally.secure_aborts = 1
            return
        # what crossed the wire: keys, shares, masked vectors or ciphertexts, ...
        self.tally.bytes_up = self.protocol.bytes_up
        self.tally.clients = len(members)
        yield ClientUpdate(-1, (total / len(members)).astype(np.float32), len(members), members=tuple(members))

    def figures(self) -> dict:
        if not self.remote:
            return {}
        # protocol messages the deployed round refused (malformed, misaddressed, ...): secagg_rejected, ckks_rejected
        rejected = self.protocol.rejected
        if sum(rejected.values()):
            log.warning("round %d: %s rejected %s", self.round, self.secure.name, dict(rejected))
        return {f"{self.secure.name}_rejected": sum(rejected.values())}


class _Unopened(Collection):
    def __init__(self, filters, tally, rnd, reached: bool):
        super().__init__(filters, tally, rnd)
        self.opened = False
        tally.secure_aborts = int(reached)


class SecureSum(Aggregator):
    """Only the sum of the round's updates reaches the server: `secure` is the summing protocol (the
    `secagg` or `ckks` stage that ends the codec pipeline), run with simulated devices or, on an engine
    that `exchanges`, with the deployed devices themselves (a round trip per protocol step)."""

    sums = True
    synchronous_only = True

    def __init__(self, secure):
        self.secure = secure
        self.name = secure.name

    def open(self, filters, tally, rnd, attempt, cohort, engine, seed) -> Collection:
        from ..secagg import SecAggAbort

        protocol = None
        if cohort:
            round_seed = int_seed(seed, "codec", rnd, attempt)
            try:
                protocol = self.secure.open_round(cohort, round_seed, engine=engine, round=rnd) if engine.exchanges \
                    else self.secure.open_round(cohort, round_seed)
            except (SecAggAbort, ValueError) as exc:
                log.warning("round %d: secure aggregation cannot start: %s", rnd, exc)
        if protocol is None:  # no secure aggregation, no aggregation: the round fails below min_clients
            return _Unopened(filters, tally, rnd, bool(cohort))
        return _Summed(filters, tally, rnd, protocol, self.secure, engine.exchanges)
