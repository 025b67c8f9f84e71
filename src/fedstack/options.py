"""The typed options of a run, grouped as a reader looks for them: `Rules` (how rounds are shaped and
guarded), `Evaluation` (what is measured, and when) and `Parts` (the built objects a run is made of
besides its strategy and trainer). `fedstack.simulate` and the loops take these instead of long
argument lists; each has defaults that make a plain FedAvg simulation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .client import FitConfig
from .errors import ConfigError


@dataclass(frozen=True)
class Rules:
    """How rounds are shaped on the simulated clock and guarded (fedstack.loop.sync, .events).

    Synchronous rounds: at least `min_clients` accepted updates or the round is tried again, up to
    `round_retries` times; `deadline_s` (> 0) drops later results, or with `partial_work` asks a slow
    client beforehand for the local steps that fit; `overselect` samples ⌈(1 + overselect)·K⌉ and keeps
    the first K to arrive. Asynchronous schedules: `concurrency` clients train at once (0 = 2·K),
    `buffer_size` updates per server step (0 = K, or 1 for a strategy that is not `buffered`).
    Guards: `max_norm_ratio` (> 0, ≥ 1) rejects updates longer than that many times the median norm;
    `epsilon_budget` (> 0) stops the run before a round that would spend more ε.
    """

    min_clients: int = 1
    round_retries: int = 2
    deadline_s: float = 0.0
    overselect: float = 0.0
    partial_work: bool = False
    concurrency: int = 0
    buffer_size: int = 0
    max_norm_ratio: float = 0.0
    epsilon_budget: float = 0.0

    def __post_init__(self):
        if self.deadline_s < 0:
            raise ConfigError("server.deadline_s", f"must be >= 0 (0 = no deadline), got {self.deadline_s}")
        if self.overselect < 0:
            raise ConfigError("server.overselect", f"must be >= 0, got {self.overselect}")
        if self.partial_work and not self.deadline_s:
            raise ConfigError("client.partial_work", "partial work stops clients at the deadline: set "
                              "server.deadline_s > 0")
        if 0 < self.max_norm_ratio < 1:
            raise ConfigError("server.max_norm_ratio", f"must be 0 (off) or >= 1: below 1 it rejects about half "
                              f"of every round's updates, got {self.max_norm_ratio}")


@dataclass(frozen=True)
class Evaluation:
    """Central evaluation on the server's test set every `every` rounds and after the last (0: only after
    the last); federated evaluation on each client's held-out split every `federated_every` rounds and
    after the last (`federated=False`: never); with `finetune`, federated evaluation also judges each
    client's model after that local training (personalisation), and with `local_only`, after the last
    round, each client's model trained alone from `local_start` (the local-only baseline). The test set
    is cut in `test_shard`s.
    A trainer's own metrics (`EvalResult.sums`) are recorded as `test_metrics`, each sum's mean per
    example, or what `finish_metrics(sums, examples)` makes of them (an F1 score, an AUC). The clients' fit
    metrics are example-weighted means unless `fit_metrics_aggregation(pairs)` says otherwise."""

    every: int = 1
    federated: bool = True
    federated_every: int = 0
    test_shard: int = 1000
    finetune: FitConfig | None = None
    # local-only training, judged after the last round: each client trains `local_only` alone from `local_start`
    local_only: FitConfig | None = None
    local_start: np.ndarray | None = field(default=None, repr=False)
    finish_metrics: Callable[[dict, int], dict] | None = None  # (summed metrics, examples) -> the metrics
    # [(a client's fit metrics, its examples), ...] -> the round's fit metrics (default: example-weighted means)
    fit_metrics_aggregation: Callable[[list], dict] | None = None

    @property
    def federated_interval(self) -> int | None:
        """Rounds between federated evaluations (0: only after the last; None: never)."""
        return self.federated_every if self.federated else None


@dataclass
class Parts:
    """What a run is made of besides its strategy, trainer and data, each optional.

    `pipeline` encodes clients' updates, `download` the global model on its way down (simulation);
    `transforms` act on the round as a whole (`fedstack.transform.Transform`: central DP's server half);
    `sampler` draws clients (default: uniform), `system` is the simulated fleet (default: equal devices
    that never fail); `attack` makes some clients malicious (fedstack.attack), `record_ledger` books
    DP-SGD clients' own ε (privacy.RecordLevelLedger); `callbacks` are called after each round with
    (record, params) — fedstack.loop.Callback objects or plain functions; `profile` records where the
    time goes; `config` is the config the run came from (fingerprinted and written to summary.json);
    `contribution` scores each round's clients (`fedstack.loop.ContributionOptions`: Shapley, GTG-Shapley,
    leave-one-out, cosine) into the round's record.
    """

    pipeline: Any = None
    download: Any = None
    transforms: list = field(default_factory=list)
    sampler: Any = None
    system: Any = None
    attack: Any = None
    record_ledger: Any = None
    callbacks: list[Callable] = field(default_factory=list)
    profile: bool = False
    config: dict | None = None
    contribution: Any = None  # fedstack.loop.contribute.ContributionOptions: score each round's clients
