"""What an operator watches on a deployed server: Prometheus metrics (`fedstack server --metrics-port`).

`OperatorMetrics` is a round-loop callback: each finished round moves its counters (rounds completed, round
duration, updates accepted and rejected by reason, client failures by kind, bytes each way, secure-aggregation
aborts), and at each scrape it reads the server's live state from the engine (`GrpcEngine.status`: connected
clients, the round in progress, messages the transport refused by reason). The metrics are served by
`prometheus_client`'s own HTTP server, on a registry of their own (no process-wide default metrics mixed in).
"""

from __future__ import annotations

import numpy as np

from .errors import FedstackError
from .extras import require
from .loop import FAILURE_KINDS, REJECT_REASONS, Callback

# Seconds: a round of a deployed federation takes from a fraction of a second to many minutes.
ROUND_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800)


def split_address(text: str, flag: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """"[HOST:]PORT" → (host, port); a bad one is a FedstackError naming `flag`."""
    host, _, port = text.rpartition(":")
    host = host.strip("[]") or default_host
    if not port.isdigit() or not 0 <= int(port) < 65536:
        raise FedstackError(f"{flag} {text!r}: give [HOST:]PORT, a port from 0 to 65535")
    return host, int(port)


class _EngineCollector:
    """Scrape-time figures read from the engine: connected clients, the round in progress, refusals."""

    def __init__(self, engine, core):
        self.engine, self.core = engine, core  # prometheus_client.core: the metric families

    def collect(self):
        core = self.core
        status = self.engine.status()
        yield core.GaugeMetricFamily("fedstack_connected_clients", "Clients heard from in the last three poll "
                                     "intervals", value=status.connected)
        yield core.GaugeMetricFamily("fedstack_registered_clients", "Clients in the registry (clients.toml)",
                                     value=len(status.clients))
        yield core.GaugeMetricFamily("fedstack_round_in_progress", "The round whose tasks are out (0: none)",
                                     value=status.round or 0)
        refused = core.CounterMetricFamily("fedstack_messages_refused", "Messages the transport refused before "
                                           "aggregation, by reason (size, malformed, stale, foreign, ...)",
                                           labels=["reason"])
        for reason, count in sorted(status.refused.items()):
            refused.add_metric([reason], count)
        yield refused


class OperatorMetrics(Callback):
    """Prometheus metrics of a deployed server, served on `address` ("[HOST:]PORT", HOST 127.0.0.1 unless
    given). The port is bound here, before training: a busy one is one line naming the flag."""

    def __init__(self, engine, address: str, flag: str = "--metrics-port"):
        prom = require("prometheus_client", "monitor", flag)
        self.host, port = split_address(address, flag)
        self.registry = registry = prom.CollectorRegistry()
        self.rounds = prom.Counter("fedstack_rounds_completed", "Rounds the server finished", registry=registry)
        self.last_round = prom.Gauge("fedstack_round", "The last finished round", registry=registry)
        self.duration = prom.Histogram("fedstack_round_duration_seconds", "Wall time of each round",
                                       buckets=ROUND_BUCKETS, registry=registry)
        self.accepted = prom.Counter("fedstack_updates_accepted", "Updates that passed every check and were "
                                     "aggregated", registry=registry)
        self.rejected = prom.Counter("fedstack_updates_rejected", "Updates refused by the round's checks, by "
                                     "reason (shape, non_finite, norm, weight, protocol, ...)", ["reason"],
                                     registry=registry)
        self.failures = prom.Counter("fedstack_client_failures", "Sampled clients that did not contribute, by "
                                     "kind (dropout, deadline, error, rejected, ...)", ["kind"], registry=registry)
        self.bytes = prom.Counter("fedstack_bytes", "Payload bytes sent to clients (down) and received (up)",
                                  ["direction"], registry=registry)
        self.aborts = prom.Counter("fedstack_secure_aggregation_aborts", "Secure-aggregation attempts that "
                                   "aborted (too few survivors)", registry=registry)
        # Known labels start at 0, so a rate over them exists before the first event (Prometheus's advice).
        for reason in REJECT_REASONS:
            self.rejected.labels(reason)
        for kind in FAILURE_KINDS:
            self.failures.labels(kind)
        for direction in ("up", "down"):
            self.bytes.labels(direction)
        registry.register(_EngineCollector(engine, require("prometheus_client.core", "monitor", flag)))
        self._previous_wall = 0.0
        try:
            self.server, _ = prom.start_http_server(port, addr=self.host, registry=registry)
        except OSError as exc:
            raise FedstackError(f"{flag} {address}: cannot listen on {self.host}:{port} ({exc.strerror or exc})")
        self.port = self.server.server_port

    def on_round(self, record: dict, params: np.ndarray) -> None:
        self.rounds.inc()
        self.last_round.set(record["round"])
        wall = float(record.get("wall_time_s") or 0.0)  # seconds since the engine started: a round is the step
        self.duration.observe(max(wall - self._previous_wall, 0.0))
        self._previous_wall = wall
        self.accepted.inc(record.get("clients", 0))
        for reason, count in record.get("rejected_by_reason", {}).items():
            self.rejected.labels(reason).inc(count)
        for kind, count in record.get("failures_by_kind", {}).items():
            self.failures.labels(kind).inc(count)
        self.bytes.labels("up").inc(record.get("bytes_up", 0))
        self.bytes.labels("down").inc(record.get("bytes_down", 0))
        self.aborts.inc(record.get("secure_aborts") or 0)

    def on_end(self, status: str) -> None:
        """The metrics stay served until the process exits: a last scrape sees the final figures."""

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
