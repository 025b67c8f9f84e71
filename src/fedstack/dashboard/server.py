"""The live dashboard: `RunFeed` (one run as the page shows it, fed by the round loop or read from a finished
run's directory) and `Dashboard` (a small HTTP server: the page, its state as JSON, and Server-Sent Events).

Threads: `Dashboard.__init__` only binds the socket (a busy port is refused before any training, and no thread
exists when the engine forks its workers); `Dashboard.start` starts two daemon threads, the server's and a
ticker (the deployed server's client list every ~2 s), and the server serves each connection on a daemon
thread of its own. `RunFeed.add` never blocks on a browser: each event stream has a bounded queue, and a
listener that falls behind is dropped (its page reconnects and reloads the state). A process forked while the
dashboard listens closes its copy of the socket (os.register_at_fork), so a worker never keeps the port taken.
"""

from __future__ import annotations

import errno
import hmac
import ipaddress
import json
import math
import os
import queue
import socket
import socketserver
import threading
import time
import weakref
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Callable
from urllib.parse import parse_qs, quote, urlsplit

from fedstack.errors import FedstackError, brief
from fedstack.report import METRICS_FILE, SUMMARY_FILE, read_metrics, read_summary

SERVER_EVERY_S = 2.0  # the deployed server's client list, pushed to the pages
KEEPALIVE_S = 15.0  # a comment on an idle event stream, so proxies and browsers keep it open
QUEUE_EVENTS = 1024  # events a page may fall behind by before it is dropped (it reconnects and reloads)
PER_CLIENT_KEYS = ("by_client",)  # per-client figures the page does not draw: left out of what it is sent


class RunFeed:
    """One run as the dashboard shows it; thread-safe (the round loop adds, HTTP threads read).

    `server_info`, for a deployed run, returns what the server knows of its clients, e.g. {"connected":
    [{"client": "alice", "state": "training", "last_seen_s": 0.4}], "registered": 3, "refused": {"size": 2},
    "round": 4}; the dashboard calls it from its own threads (every ~2 s while a page is open, and for each
    page load), so it must be thread-safe and quick.
    """

    server_info: Callable[[], dict] | None = None

    def __init__(self, name: str, rounds_total: int, *, run_dir=None, mode: str = "simulation",
                 strategy: str = "", epsilon_budget: float | None = None, start_round: int = 1):
        self.name, self.rounds_total, self.mode, self.strategy = str(name), int(rounds_total), mode, strategy
        self.run_dir = None if run_dir is None else str(run_dir)
        self.epsilon_budget = float(epsilon_budget) if epsilon_budget else None  # 0: no budget
        self.start_round = int(start_round)
        self.records: list[dict] = []
        self.status = "starting"
        self.started_at = time.time()
        self.finished_at: float | None = None
        self._lock = threading.Lock()
        self._listeners: list[Callable[[str, dict], None]] = []

    def add(self, record: dict) -> None:
        """A round finished: keep its record and tell the pages (never waits for one)."""
        with self._lock:
            self.records.append(record)
            self.status = "running"
            self._tell("round", {"index": len(self.records) - 1, "record": record})

    def finish(self, status: str) -> None:
        """The run ended ("finished", "stopped", "failed", "interrupted", ...)."""
        with self._lock:
            self.status = str(status)
            self.finished_at = time.time()
            self._tell("status", {"status": self.status, "finished_at": self.finished_at})

    def __call__(self, record: dict, params=None) -> None:
        """A round loop callback, like fedstack.report.MetricsWriter: `add(record)`."""
        self.add(record)

    def _tell(self, event: str, data: dict) -> None:
        for listener in list(self._listeners):
            try:
                listener(event, data)
            except Exception:  # noqa: BLE001 - a page's trouble must never stop the round loop
                pass

    def listen(self, listener: Callable[[str, dict], None]) -> None:
        """Call `listener(event, data)` on each new record ("round") and at the end ("status"), under the
        feed's lock: it must return at once."""
        with self._lock:
            self._listeners.append(listener)

    def unlisten(self, listener: Callable[[str, dict], None]) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    @classmethod
    def from_run_dir(cls, path) -> RunFeed:
        """A run from its directory: metrics.jsonl, and summary.json (or, for a run that never wrote one —
        killed, or still running elsewhere —, config.toml; its status is then "interrupted")."""
        run_dir = Path(path)
        if not run_dir.is_dir():
            raise FedstackError(f"{run_dir}: no such run directory")
        if not (run_dir / METRICS_FILE).is_file():
            raise FedstackError(f"{run_dir}: not a run directory ({METRICS_FILE} is missing)")
        records = read_metrics(run_dir)
        summary_file = run_dir / SUMMARY_FILE
        if summary_file.is_file():
            summary = read_summary(run_dir)
            config = summary.get("config") if isinstance(summary.get("config"), dict) else {}
            status = str(summary.get("status") or "finished")
            finished_at = summary_file.stat().st_mtime
            took = summary.get("total_time_s") or (summary.get("final") or {}).get("wall_time_s") or 0.0
        else:
            config = _read_config_toml(run_dir)
            status, finished_at = "interrupted", (run_dir / METRICS_FILE).stat().st_mtime
            took = records[-1].get("wall_time_s", 0.0) if records else 0.0
        server = config.get("server") if isinstance(config.get("server"), dict) else {}
        privacy = config.get("privacy") if isinstance(config.get("privacy"), dict) else {}
        rounds = [r["round"] for r in records if isinstance(r.get("round"), int)]
        total = server.get("rounds") if isinstance(server.get("rounds"), int) else 0
        feed = cls(run_dir.resolve().name, max([total, *rounds]), run_dir=run_dir,
                   mode="deployed" if summary_file.is_file() and summary.get("deployed") else "simulation",
                   strategy=str(server.get("strategy") or ""), epsilon_budget=_number(privacy.get("epsilon_budget")),
                   start_round=min(rounds) if rounds else 1)
        feed.records, feed.status, feed.finished_at = records, status, finished_at
        feed.started_at = finished_at - (float(took) if isinstance(took, (int, float)) else 0.0)
        return feed

    def snapshot(self) -> dict:
        """The run as JSON-able figures (non-finite numbers as null; per-client figures left out)."""
        with self._lock:
            records = list(self.records)
            state = {"name": self.name, "run_dir": self.run_dir, "mode": self.mode, "strategy": self.strategy,
                     "rounds_total": self.rounds_total, "start_round": self.start_round, "status": self.status,
                     "epsilon_budget": self.epsilon_budget, "started_at": self.started_at,
                     "finished_at": self.finished_at}
        state["records"] = [page_figures(r) for r in records]
        state["server"] = self.server() if self.server_info is not None else None
        return state

    def server(self) -> dict | None:
        """server_info(), JSON-able; its failure as {"error": ...} rather than a broken page."""
        try:
            return page_figures(self.server_info()) if self.server_info is not None else None
        except Exception as exc:  # noqa: BLE001 - the dashboard shows it; the run goes on
            return {"error": brief(exc)}


def _read_config_toml(run_dir: Path) -> dict:
    import tomllib

    path = run_dir / "config.toml"
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError:
        raise FedstackError(f"{run_dir}: not a finished run directory ({SUMMARY_FILE} and config.toml are "
                            "missing)") from None
    except tomllib.TOMLDecodeError as exc:
        raise FedstackError(f"{path}: not valid TOML ({exc})") from None


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def page_figures(value, depth: int = 0):
    """`value` as strict JSON can carry it: NaN and infinities as None, NumPy scalars as numbers, tuples as
    lists, anything else as its text; per-client figures (`by_client`, `fit_metrics_by_client`) left out."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (str, int)):
        return value
    if isinstance(value, dict):
        return {str(k): page_figures(v, depth + 1) for k, v in value.items()
                if k not in PER_CLIENT_KEYS and not (depth == 0 and k == "fit_metrics_by_client")}
    if isinstance(value, (list, tuple)):
        return [page_figures(v, depth + 1) for v in value]
    item = getattr(value, "item", None)  # a NumPy scalar
    if callable(item):
        try:
            return page_figures(item(), depth)
        except (TypeError, ValueError):
            pass
    return str(value)


def _dumps(value) -> str:
    return json.dumps(page_figures(value), separators=(",", ":"), allow_nan=False)


class _Listener:
    """One page's event stream: a bounded queue of ready-to-send SSE messages."""

    def __init__(self):
        self.queue: queue.Queue[bytes | None] = queue.Queue(maxsize=QUEUE_EVENTS)
        self.dropped = False


def parse_address(address: str) -> tuple[str, int]:
    """"[HOST:]PORT" (HOST 127.0.0.1 when left out; an IPv6 HOST in brackets: "[::1]:8050") → (host, port)."""
    text = str(address).strip()
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
        host, sep = host or "127.0.0.1", True
    if (not port.isdigit() or int(port) > 65535 or (not text.startswith("[") and ":" in host)
            or any(c.isspace() or c in "/[]@?#" for c in host) or not sep or not host):
        raise FedstackError(f"--dashboard {address}: expected [HOST:]PORT, e.g. 8050 or 127.0.0.1:8050 "
                            "(PORT 0: any free port)")
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Dashboard:
    """An HTTP server (stdlib http.server.ThreadingHTTPServer, daemon threads) showing `feeds`.

    GET / the page; /api/state {"runs": [snapshot, ...], "now": server time}; /api/events Server-Sent
    Events ("round" {"run", "index", "record"}, "status" {"run", "status", "finished_at"}, "server" {"run",
    "server"}); /healthz "ok". With a token, every path but /healthz (and /favicon.ico) wants `?token=` or
    `Authorization: Bearer TOKEN`. Without one, it listens on a loopback address only, and answers only
    requests naming a loopback host (no DNS rebinding).
    """

    def __init__(self, address: str, feeds: list[RunFeed], token: str | None = None):
        host, port = parse_address(address)
        self.address, self.feeds, self.token = str(address), list(feeds), token or None
        if self.token is None and not is_loopback(host):
            raise FedstackError(f"--dashboard {address}: {host} is not a loopback address; give a token so "
                                "that only you can open the dashboard (or listen on 127.0.0.1)")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server_class = type("_Server", (_Server,), {"address_family": family})
        try:
            self._server = server_class((host, port), _Handler)
        except socket.gaierror as exc:
            raise FedstackError(f"--dashboard {address}: unknown host {host} ({exc.strerror or exc})") from None
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise FedstackError(f"--dashboard {address}: the port is in use") from None
            if exc.errno in (errno.EACCES, errno.EPERM):
                raise FedstackError(f"--dashboard {address}: not allowed to listen there (a port below 1024 "
                                    "needs privileges)") from None
            raise FedstackError(f"--dashboard {address}: cannot listen there ({exc.strerror or exc})") from None
        self._server.dashboard = self
        _close_in_forked_children(self._server)
        self.host, self.port = host, self._server.server_address[1]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{self.port}/" + (f"?token={quote(self.token, safe='')}" if self.token else "")
        self._listeners: set[_Listener] = set()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._threads: list[threading.Thread] = []
        self._tells = []
        for index, feed in enumerate(self.feeds):
            tell = self._teller(index)
            feed.listen(tell)
            self._tells.append((feed, tell))

    def start(self) -> None:
        """Serve, on daemon threads (call it after any worker process was forked)."""
        if self._threads or self._closed.is_set():
            return
        for name, target in (("serve", self._serve), ("ticker", self._tick)):
            thread = threading.Thread(target=target, name=f"fedstack-dashboard-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def close(self) -> None:
        """Stop serving, end the event streams and free the port (idempotent)."""
        if self._closed.is_set():
            return
        self._closed.set()
        for feed, tell in self._tells:
            feed.unlisten(tell)
        if self._threads:
            self._server.shutdown()
        self._server.server_close()
        with self._lock:
            listeners, self._listeners = list(self._listeners), set()
        for listener in listeners:  # the events already queued go out first, then the stream ends
            try:
                listener.queue.put_nowait(None)
            except queue.Full:
                listener.dropped = True
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> Dashboard:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def state(self) -> dict:
        return {"runs": [feed.snapshot() for feed in self.feeds], "now": time.time()}

    def _serve(self) -> None:
        self._server.serve_forever(poll_interval=0.2)

    def _tick(self) -> None:
        """Push each deployed run's client list every ~2 s while a page listens."""
        while not self._closed.wait(SERVER_EVERY_S):
            with self._lock:
                if not self._listeners:
                    continue
            for index, feed in enumerate(self.feeds):
                if feed.server_info is not None:
                    self._broadcast("server", {"run": index, "server": feed.server()})

    def _teller(self, index: int) -> Callable[[str, dict], None]:
        def tell(event: str, data: dict) -> None:
            self._broadcast(event, {"run": index, **data})
        return tell

    def _broadcast(self, event: str, data: dict) -> None:
        """Queue an event for every page; a page whose queue is full is dropped, never waited for."""
        with self._lock:
            if not self._listeners:
                return
            message = f"event: {event}\ndata: {_dumps(data)}\n\n".encode()
            for listener in list(self._listeners):
                try:
                    listener.queue.put_nowait(message)
                except queue.Full:
                    listener.dropped = True
                    self._listeners.discard(listener)

    def _subscribe(self) -> _Listener:
        listener = _Listener()
        with self._lock:
            if self._closed.is_set():
                listener.dropped = True
            else:
                self._listeners.add(listener)
        return listener

    def _unsubscribe(self, listener: _Listener) -> None:
        with self._lock:
            self._listeners.discard(listener)

    def authorized(self, query: dict, header: str | None) -> bool:
        if self.token is None:
            return True
        expected = self.token.encode()
        given = [t.encode() for t in query.get("token", [])]
        if header and header[:7].lower() == "bearer ":
            given.append(header[7:].strip().encode())
        return any(hmac.compare_digest(t, expected) for t in given)


def _close_in_forked_children(server: _Server) -> None:
    """A worker process forked while the dashboard listens closes its copy of the socket: it serves nothing, and
    its copy would keep the port taken after the command ended for as long as the worker lives."""
    ref = weakref.ref(server)

    def close() -> None:
        alive = ref()
        if alive is not None:
            try:
                alive.socket.close()
            except OSError:
                pass

    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=close)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    dashboard: Dashboard

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)  # HTTPServer's would ask the DNS for the host's full name
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]

    def handle_error(self, request, client_address) -> None:
        pass  # a page that went away mid-answer: nothing to report, and the CLI owns the terminal


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = 60  # a connection idle (or a page not reading) this long is closed
    server_version = "fedstack-dashboard"
    sys_version = ""

    def log_message(self, format, *args) -> None:  # noqa: A002 - the base class's name
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        dashboard = self.server.dashboard
        url = urlsplit(self.path)
        path = url.path
        if path == "/healthz":
            return self._send(200, b"ok\n", "text/plain; charset=utf-8")
        if path == "/favicon.ico":
            return self._send(204, b"", None)
        if dashboard.token is None and not self._loopback_host():
            return self._send(403, b"forbidden: open the dashboard at a loopback address\n",
                              "text/plain; charset=utf-8")
        if not dashboard.authorized(parse_qs(url.query), self.headers.get("Authorization")):
            return self._send(401, b"unauthorized: give ?token= or Authorization: Bearer\n",
                              "text/plain; charset=utf-8", {"WWW-Authenticate": "Bearer"})
        if path in ("/", "/index.html"):
            return self._send(200, page(), "text/html; charset=utf-8", {
                "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline' 'unsafe-eval'; "
                "style-src 'unsafe-inline'; img-src data:; connect-src 'self'; base-uri 'none'; "
                "form-action 'none'; frame-ancestors 'none'",
                "Referrer-Policy": "no-referrer"})
        if path == "/api/state":
            return self._send(200, _dumps(dashboard.state()).encode(), "application/json")
        if path == "/api/events":
            return self._events(dashboard)
        return self._send(404, b"not found\n", "text/plain; charset=utf-8")

    def _loopback_host(self) -> bool:
        """Whether the request names a loopback host (or this server's own), as a browser on this machine
        does: a page of another site that rebinds its name to 127.0.0.1 names its own."""
        host = (self.headers.get("Host") or "").strip()
        if host.startswith("["):
            host = host[1:].partition("]")[0]
        elif host.count(":") == 1:
            host = host.partition(":")[0]
        return not host or is_loopback(host) or host == self.server.dashboard.host

    def _send(self, code: int, body: bytes, content_type: str | None, headers: dict | None = None) -> None:
        self.send_response(code)
        if content_type:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if body:
            self.wfile.write(body)

    def _events(self, dashboard: Dashboard) -> None:
        listener = dashboard._subscribe()
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Accel-Buffering", "no")
            self.end_headers()
            self.wfile.write(b"retry: 2000\n: connected\n\n")
            self.wfile.flush()
            while not listener.dropped:
                try:
                    message = listener.queue.get(timeout=KEEPALIVE_S)
                except queue.Empty:
                    message = b": keep-alive\n\n"
                if message is None or listener.dropped:
                    break
                self.wfile.write(message)
                self.wfile.flush()
        except OSError:
            pass  # the page went away
        finally:
            dashboard._unsubscribe(listener)
            self.close_connection = True


_PAGE: bytes | None = None


def page() -> bytes:
    """index.html, from the package."""
    global _PAGE
    if _PAGE is None:
        _PAGE = resources.files("fedstack.dashboard").joinpath("index.html").read_bytes()
    return _PAGE
