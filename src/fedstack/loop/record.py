"""What a round counts, typed: the `Tally` of an attempt (or of an asynchronous period) and the `RoundRecord`
the loop closes a round with. `RoundRecord.row()` is the round's line of metrics.jsonl, which callbacks get."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np

# How a sampled client can fail to contribute, as counted in each round's `failures_by_kind`.
FAILURE_KINDS = ("dropout", "deadline", "unavailable", "error", "rejected")
# Why an update was rejected, as counted in each round's `rejected_by_reason` (protocol: a deployed
# secure round refused the client's masked input or ciphertext; metrics: a DP-SGD client's privacy figures).
REJECT_REASONS = ("undecodable", "shape", "dtype", "non_finite", "weight", "norm", "protocol", "metrics")


def _kinds() -> dict[str, int]:
    return dict.fromkeys(FAILURE_KINDS, 0)


def _reasons() -> dict[str, int]:
    return dict.fromkeys(REJECT_REASONS, 0)


@dataclass
class Tally:
    """What one attempt of a round (or one asynchronous period between server steps) counted.

    The figures go to the round's record; `states`, `dp_clients` and `losses` are the loop's own:
    the clients' new state (where the server keeps it), the DP-SGD clients the record-level ledger
    booked, and the (train_loss, examples) pairs of the accepted updates.
    """

    clients: int = 0  # updates that passed every check
    sampled: int = 0
    overselected: int = 0  # arrived after the round was full (over-selection), not failures
    partial: int = 0  # accepted updates of clients asked for fewer local steps (partial work)
    bytes_up: int = 0
    bytes_up_raw: int = 0  # the same updates as raw float32
    bytes_down: int = 0
    bytes_down_raw: int = 0
    sim_s: float = 0.0  # simulated seconds it took
    failures_by_kind: dict[str, int] = field(default_factory=_kinds)
    rejected_by_reason: dict[str, int] = field(default_factory=_reasons)
    secure_aborts: int | None = None  # a summing aggregator's attempts that aborted (None: none runs)
    partial_ids: set[int] = field(default_factory=set, repr=False)  # clients asked for fewer steps
    states: dict[int, dict] = field(default_factory=dict, repr=False)
    dp_clients: list[int] = field(default_factory=list, repr=False)
    losses: list[tuple] = field(default_factory=list, repr=False)
    fit_metrics: list[tuple] = field(default_factory=list, repr=False)  # (a client's metrics, its examples)
    client_metrics: dict[int, dict] = field(default_factory=dict, repr=False)  # each accepted client's own

    @property
    def failures(self) -> int:
        return sum(self.failures_by_kind.values())

    def fail(self, kind: str, count: int = 1) -> None:
        self.failures_by_kind[kind] += count

    def keep(self, update, state) -> None:
        """An update that passed every check and goes to aggregation: keep its client's new state (None:
        the server keeps none) and count it."""
        if state is not None:
            self.states[update.client_id] = state
        if update.client_id in self.partial_ids:
            self.partial += 1
        self.losses.append((update.metrics.get("train_loss"), update.num_examples))
        self.fit_metrics.append((update.metrics, update.num_examples))
        if update.metrics:
            self.client_metrics[update.client_id] = dict(update.metrics)

    def add(self, other: Tally) -> None:
        """Count another attempt in (a retried round's figures add up over its attempts)."""
        self.sampled += other.sampled
        self.overselected += other.overselected
        self.bytes_up += other.bytes_up
        self.bytes_up_raw += other.bytes_up_raw
        self.bytes_down += other.bytes_down
        self.bytes_down_raw += other.bytes_down_raw
        self.sim_s += other.sim_s
        for kind, count in other.failures_by_kind.items():
            self.failures_by_kind[kind] += count
        for reason, count in other.rejected_by_reason.items():
            self.rejected_by_reason[reason] += count
        if other.secure_aborts is not None:
            self.secure_aborts = (self.secure_aborts or 0) + other.secure_aborts


@dataclass
class RoundRecord:
    """One round as the loop closes it: its tally, clock, privacy and evaluation figures, and what its
    parts add (a strategy's `round_figures`, an asynchronous schedule's staleness, a gossip's consensus)."""

    round: int
    tally: Tally
    attempts: int = 1
    sim_time_s: float = 0.0
    train_loss: float | None = None
    fit_metrics: dict = field(default_factory=dict)  # the clients' own fit metrics, aggregated (fit_figures)
    extra: dict = field(default_factory=dict)  # figures of the strategy and the schedule
    privacy: dict = field(default_factory=dict)  # epsilon, clip_norm, client_epsilon_max
    evaluation: dict = field(default_factory=dict)  # test_*, federated, personalized
    wall_time_s: float = 0.0
    profile: dict | None = None

    def row(self) -> dict:
        """The round's line of metrics.jsonl (and of the store, and of History.rounds)."""
        t = self.tally
        row = {"round": self.round, "clients": t.clients, "bytes_up": t.bytes_up, "bytes_up_raw": t.bytes_up_raw,
               "partial": t.partial, "rejected_by_reason": dict(t.rejected_by_reason),
               "failures": t.failures, "failures_by_kind": dict(t.failures_by_kind), "sampled": t.sampled,
               "overselected": t.overselected, "bytes_down": t.bytes_down, "bytes_down_raw": t.bytes_down_raw,
               "train_loss": self.train_loss, "attempts": self.attempts}
        if self.fit_metrics:
            row["fit_metrics"] = self.fit_metrics
        if t.client_metrics:  # per client, as it reported them (JSON keys are strings)
            row["fit_metrics_by_client"] = {str(cid): m for cid, m in sorted(t.client_metrics.items())}
        if t.secure_aborts is not None:
            row["secure_aborts"] = t.secure_aborts
        row.update(self.extra)
        row["sim_time_s"] = self.sim_time_s
        row.update(self.privacy)
        row.update(self.evaluation)
        row["wall_time_s"] = self.wall_time_s
        if self.profile is not None:
            row["profile"] = self.profile
        return row


def fit_figures(pairs: list[tuple], aggregate: Callable[[list[tuple]], dict] | None = None) -> dict:
    """A round's fit metrics from its accepted clients' (metrics, examples) pairs: `aggregate(pairs)` where
    the run names one (Flower's fit_metrics_aggregation_fn; `eval.fit_metrics_aggregation`), else the
    example-weighted means (`mean_fit_metrics`)."""
    return aggregate(list(pairs)) if aggregate is not None and pairs else mean_fit_metrics(pairs)


def mean_fit_metrics(pairs: Iterable[tuple]) -> dict[str, float]:
    """The example-weighted mean of each numeric metric the round's accepted updates report (a metric a
    client leaves out, or reports as NaN — DP-SGD's loss —, does not count for it): Flower's default
    fit_metrics_aggregation_fn, right for means."""
    values: dict[str, list[tuple[float, float]]] = {}
    for metrics, examples in pairs:
        for name, value in metrics.items():
            if isinstance(value, (int, float, np.number)) and not isinstance(value, bool) and math.isfinite(value):
                values.setdefault(name, []).append((float(value), max(float(examples), 0.0)))
    means = {}
    for name, pairs_ in sorted(values.items()):
        weight = sum(w for _, w in pairs_)
        means[name] = sum(v * w for v, w in pairs_) / weight if weight > 0 else sum(v for v, _ in pairs_) / len(pairs_)
    return means


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
