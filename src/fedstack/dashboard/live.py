"""A run's live dashboard as a round-loop callback (`fedstack run --dashboard`, `fedstack server --dashboard`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import numpy as np

from ..loop import Callback
from .server import Dashboard, RunFeed


class LiveDashboard(Callback):
    """Shows one run while it trains. The port is bound when this is built — before training, so a busy
    port is refused first — and served from `on_start`, once the engine's worker processes exist (a serving
    thread started earlier would stop the pool engine from forking its workers). A deployed server, which
    forks none, serves at once (`start`): its operator watches clients join before the first round."""

    def __init__(self, address: str, feed: RunFeed, token: str | None = None):
        self.feed = feed
        self.dashboard = Dashboard(address, [feed], token)

    @property
    def url(self) -> str:
        return self.dashboard.url

    def start(self) -> None:
        self.dashboard.start()  # once: a started (or closed) dashboard ignores it

    def on_start(self, rounds: int, start_round: int) -> None:
        self.start()

    def on_round(self, record: dict, params: np.ndarray) -> None:
        self.feed.add(record)

    def on_end(self, status: str) -> None:
        self.feed.finish(status)

    def close(self) -> None:
        self.dashboard.close()


def run_feed(config, run_dir: Path, mode: str, server_info: Callable[[], dict] | None = None) -> RunFeed:
    """The feed of a run about to start from `config` into `run_dir`."""
    budget = config.privacy.epsilon_budget or None
    feed = RunFeed(Path(run_dir).name, config.server.rounds, run_dir=run_dir, mode=mode,
                   strategy=config.server.strategy, epsilon_budget=budget)
    feed.server_info = server_info
    return feed


def server_info(engine) -> Callable[[], dict]:
    """What the dashboard's deployed view shows of a GrpcEngine: every registered client with its state,
    last heartbeat, rounds served, refusals and measured uplink; the round in progress and the transport's
    refusals by reason (`GrpcEngine.status`)."""

    def info() -> dict:
        status = engine.status()
        return {"connected": [dataclasses.asdict(c) for c in status.clients],
                "connected_count": status.connected, "registered": len(status.clients), "round": status.round,
                "refused": status.refused}

    return info
