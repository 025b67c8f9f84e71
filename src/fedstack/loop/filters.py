"""The filters every update passes on its way from a client to the aggregator, in every schedule:

decode → validate (`update_problem`) → account (a DP-SGD client's release in the record-level ledger)
→ attack (simulation: malicious clients' updates replaced) → screen (the norm bound).

An update that fails is counted in the tally by reason (`REJECT_REASONS`), logged, and never aggregated;
it never ends the round. A simulated attack replaces updates after decoding and before the screen, so
the screen judges what attackers send.
"""

from __future__ import annotations

import logging
import time
from collections import deque

import numpy as np

from ..client import FitConfig
from ..codec import CodecContext
from ..engine import Outcome, Workload
from ..errors import brief
from ..profiling import Profile
from ..strategy import ClientUpdate
from ..validation import dp_release, influence, update_problem
from .record import Tally

log = logging.getLogger("fedstack.server")


class UpdateFilters:
    """Decodes, checks, books and screens updates; counts every refusal in the tally it is given."""

    def __init__(self, workload: Workload, *, max_norm_ratio: float = 0.0, attack=None, record_ledger=None,
                 profile: Profile | None = None):
        self.workload = workload
        self.max_norm_ratio = float(max_norm_ratio)
        self.attack = attack
        self.record_ledger = record_ledger  # DP-SGD clients: each one's own ε (privacy.RecordLevelLedger)
        self.profile = profile
        self.rejected = 0  # over the run

    @property
    def holds(self) -> bool:
        """Whether the screen needs a round's updates at once (the norm bound's median, an update attack)."""
        return self.max_norm_ratio > 0 or (self.attack is not None and self.attack.tampers)

    def accept(self, outcome: Outcome, size: int, tally: Tally) -> ClientUpdate | None:
        """Decode and check one client's result; a malformed update is counted ("rejected"), not fatal."""
        task, reply = outcome.task, outcome.value
        tally.bytes_up += len(reply.payload)
        tally.bytes_up_raw += 4 * size  # what the update would weigh as raw float32
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
            self.reject(task.round, task.client_id, *problem, tally)
            return None
        tally.clients += 1
        return ClientUpdate(task.client_id, update, reply.num_examples, reply.metrics)

    def account(self, rnd: int, update: ClientUpdate, config: FitConfig, tally: Tally) -> ClientUpdate | None:
        """Book a DP-SGD client's release in the record-level ledger (and list it in `tally.dp_clients`); the
        update, or None if its privacy figures are missing or out of range (a deployed client's word is checked)."""
        if self.record_ledger is None or "dp_steps" not in update.metrics:
            return update
        release = dp_release(update.metrics)
        if release is None:
            self.reject(rnd, update.client_id, "metrics", "dp_steps / dp_sample_rate missing or out of range",
                        tally, counted=True)
            return None
        self.record_ledger.add(update.client_id, *release, config.dp_noise_multiplier)
        tally.dp_clients.append(update.client_id)
        return update

    def client_epsilon_max(self, tally: Tally) -> dict:
        """DP-SGD: {"client_epsilon_max": the largest record-level ε of the tally's clients, or None};
        {} without a ledger."""
        if self.record_ledger is None:
            return {}
        spent = self.record_ledger.epsilons(tally.dp_clients)
        return {"client_epsilon_max": float(spent.max()) if spent.size else None}

    def screen(self, rnd: int, updates: list[ClientUpdate], size: int, tally: Tally,
               recent: deque | None = None) -> list[ClientUpdate]:
        """The updates that pass the round-level checks, in order, after a simulated attack replaced the
        malicious clients' (an attacker's vector is checked like any). The norm bound compares each
        update with the median norm of `updates` (and of the `recent` norms, which it extends)."""
        if self.attack is not None and self.attack.tampers:
            honest, updates = updates, []
            for before, u in zip(honest, self.attack.tamper(rnd, honest)):
                problem = update_problem(u.update, size, u.num_examples) if u is not before else None
                if problem:
                    self.reject(rnd, u.client_id, *problem, tally, counted=True)
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
                self.reject(rnd, u.client_id, "norm", f"weighted L2 norm {norm:.4g} > server.max_norm_ratio = "
                            f"{self.max_norm_ratio:g} × the median {median:.4g}", tally, counted=True)
            else:
                passed.append(u)
        return passed

    def reject(self, rnd: int, client_id: int, reason: str, message: str, tally: Tally,
               counted: bool = False) -> None:
        """Count and log a rejected update (`counted`: it had been accepted into the round's clients)."""
        tally.fail("rejected")
        self.rejected += 1
        tally.rejected_by_reason[reason] += 1
        if counted:
            tally.clients -= 1
        log.warning("round %d: rejected update from client %d (%s): %s", rnd, client_id, reason, message)
