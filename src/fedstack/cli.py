"""The command line: `fedstack run | report | data`."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from .errors import FedstackError

EXIT_USAGE = 2
EXIT_FAILED = 1  # `fedstack client`: every training task it ran failed (each logged, and reported to the server)
EXIT_INTERRUPTED = 130
RUN_LOG = "run.log"

log = logging.getLogger("fedstack.cli")

# What each reason a deployed server counts in `refused` means (fedstack.transport.server).
REFUSALS = {
    "unauthenticated": "calls with an unknown or missing client token (not a registered client)",
    "foreign": "calls whose TLS client certificate names another client than their token, or updates "
               "answering another client's task",
    "stale": "updates to a task no longer open (a replay, a reply after the deadline or the round's end) or "
             "for another round",
    "size": "updates announcing more bytes than a reply to their task may hold",
    "weight": "updates claiming a negative example count, or more than the client's max_examples",
    "malformed": "updates that did not decode or check out (wrong length, non-finite values, bad metrics, "
                 "a broken message stream)",
    "busy": "updates sent while another reply of the same client was still arriving",
}


def main(argv: list[str] | None = None) -> int:
    import errno
    import sqlite3

    # The command's clock (progress lines, summary.json's total_time_s): from the process's start when this is
    # the program (its interpreter start-up and imports included), else from this call.
    started = time.perf_counter() - (_process_age() if argv is None else 0.0)
    parser = _parser()
    args = parser.parse_args(argv)
    args.started, args.started_at = started, time.time() - (time.perf_counter() - started)
    if not args.debug and "GRPC_TRACE" not in os.environ:
        # gRPC's C core logs at INFO by default: a server's stderr would fill with a `Handshake failed` line
        # per refused TLS connection. Its errors still show; --debug (or GRPC_VERBOSITY) shows everything.
        os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # read when grpc is first imported, which is later
    level = logging.DEBUG if args.debug else logging.WARNING
    stderr = logging.StreamHandler()
    stderr.setLevel(level)  # run.log takes INFO records too (RunLog); stderr keeps to warnings
    stderr.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[stderr])
    try:
        return args.func(args)
    except FedstackError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # `fedstack report RUN | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 141  # 128 + SIGPIPE, as a shell reports a command killed by it
    except (OSError, sqlite3.DatabaseError) as exc:
        # Storage the command cannot write (a full disk, a quota, a file size limit, a read-only or
        # forbidden directory) or a store that is not a database: one line naming the file. Other
        # errors (and the store's programming errors) keep their traceback: they are bugs.
        storage = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM)
        if args.debug or not (exc.errno in storage if isinstance(exc, OSError) else
                              isinstance(exc, sqlite3.OperationalError) or type(exc) is sqlite3.DatabaseError):
            raise
        what = (exc.strerror or str(exc)) if isinstance(exc, OSError) else str(exc)
        where = getattr(exc, "filename", None)  # the store names its file on the sqlite errors it raises
        print(f"error: {where}: {what}" if where else f"error: {what}", file=sys.stderr)
        return EXIT_USAGE


def _process_age() -> float:
    """Seconds since this process started (Linux: /proc), or 0 where that cannot be read."""
    try:
        with open("/proc/self/stat") as stat, open("/proc/uptime") as uptime:
            ticks = int(stat.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime, in clock ticks
            return max(0.0, float(uptime.read().split()[0]) - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


def _parser() -> argparse.ArgumentParser:
    from .version import __version__

    parser = argparse.ArgumentParser(prog="fedstack", description="Federated learning: simulate, deploy, report.")
    parser.add_argument("--version", action="version", version=f"fedstack {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", required=True)
    # In this order: `fedstack --help` lists the commands as they are added.
    for add_command in (_add_run_command, _add_report_command, _add_server_command, _add_client_command,
                        _add_certs_command, _add_keys_command, _add_data_command, _add_export_command,
                        _add_predict_command, _add_dashboard_command, _add_status_command):
        add_command(sub)
    return parser


def _add_run_command(sub) -> None:
    """`fedstack run`: a simulation."""
    run = sub.add_parser("run", help="run a simulation (default: FedAvg on Fashion-MNIST)")
    run.add_argument("config", nargs="?", help="TOML config file (defaults apply to missing keys)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config key, e.g. --set server.rounds=5 (repeatable)")
    run.add_argument("--out", help="run directory (default: runs/<timestamp>)")
    run.add_argument("--quiet", action="store_true", help="plain log lines instead of a progress bar")
    _add_dashboard_flags(run)
    run.add_argument("--profile", action="store_true", help="record where each round's time goes (training, "
                     "codecs, aggregation, evaluation, waiting, idle workers) in metrics.jsonl, summary.json "
                     "and the report")
    run.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    run.set_defaults(func=cmd_run)


def _add_dashboard_flags(command) -> None:
    command.add_argument("--dashboard", metavar="[HOST:]PORT", help="serve a live dashboard of the run here (HOST "
                         "127.0.0.1 unless given; PORT 0: any free one); off loopback it needs --dashboard-token-file")
    command.add_argument("--dashboard-token-file", metavar="FILE", help="a file holding the token the dashboard "
                         "(and `fedstack status`) asks for")


def _add_dashboard_command(sub) -> None:
    """`fedstack dashboard`: browse and compare finished runs."""
    dashboard = sub.add_parser("dashboard", help="browse and compare finished runs in a web page")
    dashboard.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    dashboard.add_argument("--listen", default="127.0.0.1:8050", metavar="[HOST:]PORT",
                           help="where to serve the page (default 127.0.0.1:8050)")
    dashboard.add_argument("--dashboard-token-file", metavar="FILE", help="a file holding the token the page asks "
                           "for (needed off loopback)")
    dashboard.set_defaults(func=cmd_dashboard)


def _add_status_command(sub) -> None:
    """`fedstack status`: what a live dashboard shows, in the terminal."""
    status = sub.add_parser("status", help="print what a running server's (or run's) dashboard shows")
    status.add_argument("--server", required=True, metavar="HOST:PORT", help="the address its --dashboard serves")
    status.add_argument("--token-file", help="the file holding its --dashboard-token-file token")
    status.add_argument("--json", action="store_true", help="print the state as JSON")
    status.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for an answer")
    status.set_defaults(func=cmd_status)


def _add_report_command(sub) -> None:
    """`fedstack report`: a finished run's summary and plots."""
    report = sub.add_parser("report", help="print a run's summary and redraw its plots")
    report.add_argument("run_dir")
    report.set_defaults(func=cmd_report)


def _add_server_command(sub) -> None:
    """`fedstack server`: a deployed run's server."""
    server = sub.add_parser("server", help="serve a run to client processes over gRPC")
    server.add_argument("--config", help="TOML config of the run")
    server.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    server.add_argument("--listen", default="0.0.0.0:9092", help="address:port to listen on (port 0: any free)")
    server.add_argument("--clients", required=True, help="clients.toml: the registry of client token hashes")
    server.add_argument("--tls-cert", help="server certificate (PEM)")
    server.add_argument("--tls-key", help="server private key (PEM)")
    server.add_argument("--tls-client-ca", help="require client certificates signed by this CA (mutual TLS)")
    server.add_argument("--insecure", action="store_true", help="plaintext gRPC (no TLS): only for tests")
    server.add_argument("--deadline", type=float, default=600.0, help="seconds to wait for a client's update")
    server.add_argument("--heartbeat", type=float, default=5.0, help="seconds between a training client's "
                        "heartbeats; three missed ones and its task counts as dropped")
    server.add_argument("--share-seed", action="store_true", help="send clients the run seed (trials only: "
                        "--partition data and codec randomness then match a simulation's bit for bit)")
    server.add_argument("--out", help="run directory (default: runs/<timestamp>)")
    server.add_argument("--quiet", action="store_true", help="plain log lines instead of a progress bar")
    _add_dashboard_flags(server)
    server.add_argument("--metrics-port", metavar="[HOST:]PORT", help="serve Prometheus metrics here (HOST "
                        "127.0.0.1 unless given): rounds, round duration, connected clients, updates accepted and "
                        "refused by reason, bytes, secure-aggregation aborts")
    server.add_argument("--profile", action="store_true", help="record where each round's time goes (waiting "
                        "for clients, decoding, aggregation, evaluation)")
    server.set_defaults(func=cmd_server)


def _add_client_command(sub) -> None:
    """`fedstack client`: a device that joins a deployed run."""
    client = sub.add_parser("client", help="join a server and train on this device's data")
    client.add_argument("--server", required=True, help="HOST:PORT of the server")
    client.add_argument("--token-file", required=True, help="file holding this client's token")
    client.add_argument("--data", help="local data: .npz with x and y, or .csv with a 'label' column")
    client.add_argument("--partition", type=int, help="instead of --data: partition ID of the run's dataset")
    client.add_argument("--ca", help="CA certificate that signed the server's (PEM)")
    client.add_argument("--cert", help="client certificate, for mutual TLS (PEM)")
    client.add_argument("--key", help="client private key, for mutual TLS (PEM)")
    client.add_argument("--insecure", action="store_true", help="plaintext gRPC (no TLS): only for tests")
    client.add_argument("--state", help="file keeping this device's client state (SCAFFOLD) across restarts")
    client.add_argument("--ckks-secret", metavar="FILE", help="ckks_secret.bin of `fedstack keys`: this client is "
                        "the key holder that decrypts the aggregate of homomorphic aggregation (codec stage ckks)")
    client.add_argument("--require", action="append", default=[], metavar="secagg|ckks|dp",
                        help="refuse to train unless the server's config protects this device's updates so "
                        "(repeatable, or comma-separated): secagg or ckks, the summing stage; dp, noise added on "
                        "the device (clip then gaussian with privacy.mode local or distributed, or client.dp_sgd); "
                        "checked at every join, exit code 2 if not met")
    client.add_argument("--ckks-public", metavar="FILE", help="ckks_public.bin of `fedstack keys`: accept only "
                        "this key pair's public key from the server (implies --require ckks; --require ckks needs "
                        "it, or --ckks-secret)")
    client.add_argument("--min-members", type=int, default=2, metavar="N", help="with --ckks-secret: decrypt only "
                        "sums of at least N clients (and of the run's server.min_clients), one per round "
                        "(default: 2)")
    client.set_defaults(func=cmd_client)


def _add_certs_command(sub) -> None:
    """`fedstack certs`: TLS credentials for a deployment."""
    certs = sub.add_parser("certs", help="make a CA, a server certificate and client credentials")
    certs.add_argument("--out", required=True, help="directory to create")
    certs.add_argument("--clients", type=int, required=True, help="number of client credentials")
    certs.add_argument("--host", action="append", default=[], help="server name or IP (repeatable; "
                       "default: localhost and 127.0.0.1)")
    certs.set_defaults(func=cmd_certs)


def _add_keys_command(sub) -> None:
    """`fedstack keys`: a CKKS key pair."""
    keys = sub.add_parser("keys", help="make a CKKS key pair for homomorphic aggregation (codec stage ckks)")
    keys.add_argument("out", help="directory for ckks_public.bin (clients, server) and ckks_secret.bin (key holder)")
    keys.add_argument("--overwrite", action="store_true", help="replace existing keys")
    keys.set_defaults(func=cmd_keys)


def _add_data_command(sub) -> None:
    """`fedstack data`: where a dataset is."""
    data = sub.add_parser("data", help="say where a dataset is, or how to get it")
    data.add_argument("name", choices=["fashion_mnist", "digits", "synthetic", "shakespeare"])
    data.add_argument("--path", default="", help="also look in this directory")
    data.add_argument("--download", action="store_true",
                      help="download Fashion-MNIST to ~/.cache/fedstack (checked by SHA-256)")
    data.set_defaults(func=cmd_data)


def cmd_keys(args) -> int:
    from . import he

    try:
        public, secret = he.write_keys(args.out, overwrite=args.overwrite)
    except FileExistsError as exc:
        raise FedstackError(f"{exc}; pass --overwrite to replace the keys") from None
    print(f"public key (clients and server): {public}\nsecret key (the key holder only): {secret}")
    return 0


def cmd_run(args) -> int:
    from rich.console import Console

    from .plan import load_config
    from .experiment import run_config
    from .records import default_run_dir
    from .report import print_summary

    config = load_config(args.config, args.overrides)
    run_dir = Path(args.out) if args.out else default_run_dir()
    console = Console()
    live = _live_dashboard(args, config, run_dir, "simulation")  # a busy port is refused before any work
    if live is not None:
        print(f"dashboard: {live.url}", flush=True)
    progress = Progress(config.server.rounds, console, plain=args.quiet or not console.is_terminal,
                        started=args.started)
    try:
        with RunLog(run_dir), progress:
            log.info("fedstack run: %s rounds into %s", config.server.rounds, run_dir)
            run_config(config, run_dir, on_round=[progress, *([live] if live else [])], profile=args.profile)
    except KeyboardInterrupt:
        finish_summary(run_dir, args)
        print(f"interrupted: finished rounds are saved in {run_dir}; the same command with "
              f"--out {run_dir} resumes", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if live is not None:
            live.close()
    finish_summary(run_dir, args)
    print_summary(run_dir, console)
    console.print(f"results in {run_dir}")
    return 0


def cmd_server(args) -> int:
    from rich.console import Console

    from .plan import dataset_of, load_config
    from .records import default_run_dir
    from .report import print_summary
    from .transport.security import ClientRegistry
    from .dashboard.live import server_info
    from .operator import OperatorMetrics
    from .transport.server import FederationService, GrpcEngine, client_view

    config = load_config(args.config, args.overrides)
    registry = ClientRegistry.load(args.clients)
    _check_server_tls_flags(args)
    run_dir = Path(args.out) if args.out else default_run_dir()
    dataset = dataset_of(config)
    if not args.heartbeat > 0:
        raise FedstackError(f"--heartbeat must be > 0 seconds, got {args.heartbeat}")
    bounds = _example_bounds(registry, config, args.clients)
    engine = GrpcEngine(registry.names, deadline_s=args.deadline, poll_s=args.heartbeat, max_examples=bounds)
    service = FederationService(engine, registry, client_view(config, args.share_seed), tuple(dataset.x.shape[1:]),
                                dataset.num_classes)
    # Both bind their ports now, before the gRPC server: a busy one is refused before any client waits.
    live = _live_dashboard(args, config, run_dir, "deployed", server_info(engine))
    metrics = OperatorMetrics(engine, args.metrics_port) if args.metrics_port else None
    server, port = _start_grpc_server(service, args, len(registry.names))
    host = args.listen.rsplit(":", 1)[0]
    print(f"listening on {host}:{port}", flush=True)
    if live is not None:
        live.start()  # no worker processes to fork here: the operator watches clients join
        print(f"dashboard: {live.url}", flush=True)
    if metrics is not None:
        print(f"Prometheus metrics on http://{metrics.host}:{metrics.port}/metrics", flush=True)
    watchers = [w for w in (live, metrics) if w is not None]
    console = Console()
    completed = False
    run_log = RunLog(run_dir)
    try:
        with run_log:
            log.info("fedstack server: listening on %s:%s for %s rounds into %s", host, port, config.server.rounds,
                     run_dir)
            need = max(config.server.min_clients, 1)
            _wait_for_clients(engine, need, len(registry.names))
            _run_deployed(config, run_dir, engine, dataset, need, console, args, watchers)
            completed = True
    except KeyboardInterrupt:
        print(f"interrupted: finished rounds are saved in {run_dir}; clients wait for the server to come back "
              "(the same command resumes)", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        _stop_server(server, engine, completed)
        for watcher in watchers:
            watcher.close()
        finish_summary(run_dir, args)
    print_summary(run_dir, console)
    console.print(f"results in {run_dir}")
    for line in refusal_lines(engine.refused):
        console.print(line, highlight=False)
    return 0


def _live_dashboard(args, config, run_dir: Path, mode: str, info=None):
    """The run's LiveDashboard when --dashboard asks for one (its port bound now), else None."""
    if not args.dashboard:
        return None
    from .dashboard.live import LiveDashboard, run_feed
    from .transport.security import read_token

    token = read_token(args.dashboard_token_file) if args.dashboard_token_file else None
    return LiveDashboard(args.dashboard, run_feed(config, run_dir, mode, info), token)


def cmd_dashboard(args) -> int:
    """Serve finished runs (one RunFeed each) until Ctrl-C."""
    from .dashboard import Dashboard, RunFeed
    from .transport.security import read_token

    feeds = [RunFeed.from_run_dir(path) for path in args.run_dirs]
    token = read_token(args.dashboard_token_file) if args.dashboard_token_file else None
    dashboard = Dashboard(args.listen, feeds, token)
    dashboard.start()
    print(f"dashboard: {dashboard.url}  (Ctrl-C stops it)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        dashboard.close()


def cmd_status(args) -> int:
    """Print a dashboard's /api/state: each run's progress and figures, a deployed server's clients."""
    import json
    import urllib.error
    import urllib.request

    from .transport.security import read_token

    address = args.server if "://" in args.server else f"http://{args.server}"
    request = urllib.request.Request(address.rstrip("/") + "/api/state")
    if args.token_file:
        request.add_header("Authorization", f"Bearer {read_token(args.token_file)}")
    try:
        with urllib.request.urlopen(request, timeout=args.timeout) as answer:
            state = json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        why = "the token is missing or wrong (--token-file)" if exc.code == 401 else f"HTTP {exc.code}"
        raise FedstackError(f"--server {args.server}: {why}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise FedstackError(f"--server {args.server}: no dashboard answers there ({reason})") from None
    if args.json:
        print(json.dumps(state, indent=2))
        return 0
    from rich.console import Console

    from .report import status_tables

    console = Console()
    for table in status_tables(state):
        console.print(table)
    return 0


def _check_server_tls_flags(args) -> None:
    """Refuse a server without TLS credentials unless --insecure says plaintext on purpose (and warn then)."""
    if bool(args.tls_cert) != bool(args.tls_key):
        raise FedstackError("--tls-cert and --tls-key go together")
    if not args.tls_cert and not args.insecure:
        raise FedstackError("give --tls-cert and --tls-key, or --insecure for plaintext (tests only)")
    if args.insecure:
        print("WARNING: plaintext gRPC: tokens and updates cross the network unencrypted", file=sys.stderr)


def _example_bounds(registry, config, clients_file: str) -> dict[str, int]:
    """Each client's max_examples (its registry entry, else server.max_examples; 0: unbounded), noting any gap."""
    bounds = {name: registry.max_examples.get(name, config.server.max_examples) for name in registry.names}
    if not all(bounds.values()):
        print("note: a client's claimed example count cannot be checked: clients without max_examples in "
              f"{clients_file} (or server.max_examples) have their updates weighted equally", file=sys.stderr)
    return bounds


def _start_grpc_server(service, args, clients: int):
    """Serve `service` on --listen, with TLS unless --insecure: (the gRPC server, the port it listens on)."""
    from .transport.security import read_pem
    from .transport.server import STREAMS_PER_CONNECTION, serve

    tls = {}
    if args.tls_cert:
        tls = {"tls_cert": read_pem(args.tls_cert), "tls_key": read_pem(args.tls_key),
               "client_ca": read_pem(args.tls_client_ca) if args.tls_client_ca else None}
    # Each client holds at most a poll, an arriving update and a heartbeat at once: three threads, plus some.
    return serve(service, args.listen, workers=3 * clients + 16, max_calls=STREAMS_PER_CONNECTION * clients + 16,
                 **tls)


def _wait_for_clients(engine, need: int, registered: int) -> None:
    """Block until `need` of the `registered` clients have joined."""
    print(f"waiting for {need} of {registered} clients", flush=True)
    while len(engine.connected()) < need:
        time.sleep(0.2)


def _run_deployed(config, run_dir: Path, engine, dataset, need: int, console, args, watchers: list) -> None:
    """Run the rounds over the connected clients, showing progress (and to `watchers`: dashboard, metrics)."""
    from .experiment import run_config
    from .transport.server import ConnectedSampler

    progress = Progress(config.server.rounds, console, plain=args.quiet or not console.is_terminal,
                        started=args.started)
    with progress:
        run_config(config, run_dir, on_round=[progress, *watchers], engine=engine,
                   sampler=ConnectedSampler(engine, config.seed, need, wait_s=args.deadline),
                   dataset=dataset, profile=args.profile)


def _stop_server(server, engine, completed: bool) -> None:
    """Stop serving; only a finished run sends clients home, otherwise they wait for the server's return."""
    if completed:
        engine.stop_clients()
        time.sleep(min(engine.poll_s, 2.0))  # let polling clients hear that the run is over
    server.stop(grace=2 if completed else 0).wait()


def cmd_client(args) -> int:
    from .transport.client import Client, TlsSettings
    from .transport.security import read_pem, read_token

    if not args.insecure and not args.ca:
        raise FedstackError("give --ca (the CA that signed the server's certificate), or --insecure")
    tls = TlsSettings(ca=read_pem(args.ca) if args.ca else None, cert=read_pem(args.cert) if args.cert else None,
                      key=read_pem(args.key) if args.key else None, insecure=args.insecure)
    client = Client(args.server, read_token(args.token_file), tls=tls, data=args.data, partition=args.partition,
                    state_path=args.state, ckks_secret=args.ckks_secret, require=args.require,
                    ckks_public=args.ckks_public, min_members=args.min_members)
    client.run()
    print(f"run over: {client.submitted} updates accepted, {client.refused} refused, {client.failed} failed")
    if client.failed and client.failed == client.tasks:
        print(f"error: all {client.tasks} training tasks failed on this device (see the warnings above)",
              file=sys.stderr)
        return EXIT_FAILED
    return 0


def cmd_certs(args) -> int:
    from .transport.security import make_credentials

    out = make_credentials(args.out, args.clients, hosts=tuple(args.host) or ("localhost", "127.0.0.1"))
    print(f"wrote a CA, a server certificate and {args.clients} client credentials to {out}")
    return 0


def _add_export_command(sub) -> None:
    """`fedstack export`: a finished run's model as a file."""
    export = sub.add_parser("export", help="write a run's trained model as PyTorch, safetensors or ONNX")
    export.add_argument("run_dir")
    export.add_argument("--format", default="pt", help="pt (a state_dict) | safetensors | onnx (checked with "
                        "ONNX Runtime)")
    export.add_argument("--out", required=True, help="the file to write")
    export.set_defaults(func=cmd_export)


def _add_predict_command(sub) -> None:
    """`fedstack predict`: a finished run's model on some inputs."""
    predict = sub.add_parser("predict", help="print a run's model's predictions for the inputs of an .npz file")
    predict.add_argument("run_dir")
    predict.add_argument("inputs", help=".npz file whose array x (or only array) holds the inputs")
    predict.set_defaults(func=cmd_predict)


def cmd_export(args) -> int:
    from .export import export

    done = export(args.run_dir, args.format, args.out)
    check = f"; ONNX Runtime reproduces PyTorch's outputs within {done.max_abs_difference:.2g}" \
        if done.max_abs_difference is not None else ""
    print(f"wrote {done.path} ({done.format}, {done.parameters} parameters){check}")
    return 0


def cmd_predict(args) -> int:
    import numpy as np

    from .export import predict

    for row in predict(args.run_dir, args.inputs):
        print(" ".join(f"{v:.6g}" for v in np.atleast_1d(row)) if np.ndim(row) else int(row))
    return 0


def cmd_report(args) -> int:
    from .report import plot_report, print_summary

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise FedstackError(f"run directory not found: {run_dir}")
    print_summary(run_dir)
    print(f"plot: {plot_report(run_dir)}")  # without matplotlib: one line naming the `plots` extra, exit code 2
    return 0


def cmd_data(args) -> int:
    from .data import sources

    if args.name in ("digits", "synthetic"):
        if args.path:
            raise FedstackError(f"--path {args.path}: {args.name} reads no files (it is made on the fly)")
        print(f"{args.name} is made on the fly: nothing to install")
        return 0
    if args.name == "shakespeare":
        from .data import shakespeare

        print(f"shakespeare: {shakespeare.find_archive(args.path, download=args.download)}")
        return 0
    if args.download:
        print(f"downloaded to {sources.download_fashion_mnist()}")
        return 0
    found = sources.find_fashion_mnist(args.path)
    if found is None:
        sources.load_fashion_mnist(args.path)  # raises the error that says where it looked and what to run
    print(f"fashion_mnist: {found}")
    return 0


def refusal_lines(refused: dict[str, int]) -> list[str]:
    """One line per reason a deployed server refused something (its `refused` counts), saying what it means."""
    return [f"refused {count} × {reason}: {REFUSALS.get(reason, 'see the warnings in run.log')}"
            for reason, count in sorted(refused.items()) if count]


class RunLog(logging.FileHandler):
    """run_dir/run.log: the `fedstack` loggers' records at INFO and above, for the length of a `with`.

    Records held in memory until the run has made its directory (a run refused on its config leaves no
    directory behind); the `fedstack` logger is opened to INFO meanwhile (stderr's handler keeps to its level).
    """

    def __init__(self, run_dir):
        super().__init__(Path(run_dir) / RUN_LOG, encoding="utf-8", delay=True)
        self.setLevel(logging.INFO)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self._held: list[logging.LogRecord] = []
        self._logger = logging.getLogger("fedstack")

    def __enter__(self):
        self._level = self._logger.level
        if self._logger.getEffectiveLevel() > logging.INFO:
            self._logger.setLevel(logging.INFO)
        self._logger.addHandler(self)
        return self

    def __exit__(self, *exc):
        self._logger.removeHandler(self)
        self._logger.setLevel(self._level)
        self.close()

    def emit(self, record: logging.LogRecord) -> None:
        if self.stream is None and not Path(self.baseFilename).parent.is_dir():
            self._held.append(record)
            return
        self._release()
        super().emit(record)

    def _release(self) -> None:
        held, self._held = self._held, []
        for record in held:
            super().emit(record)

    def close(self) -> None:
        if self._held and Path(self.baseFilename).parent.is_dir():
            self._release()
        self._held = []
        super().close()


def finish_summary(run_dir: Path, args) -> bool:
    """Add what only the command knows to the summary.json this command's run wrote (False if it wrote none):
    `total_time_s`, the command's whole time so far (start-up, data, rounds, report)."""
    from .report import SUMMARY_FILE, read_summary, write_summary

    path = Path(run_dir) / SUMMARY_FILE
    try:
        if path.stat().st_mtime < args.started_at - 1:  # an earlier session's: this one ended before writing
            return False
    except FileNotFoundError:
        return False
    summary = read_summary(run_dir)
    summary["total_time_s"] = time.perf_counter() - args.started
    write_summary(run_dir, summary)
    return True


class Progress:
    """Per-round progress: a live bar on a terminal, one plain line per round otherwise (also in run.log).

    Times: `rounds` is the rounds' wall time since the engine started (`wall_time_s` of metrics.jsonl, the
    summary's "wall time of the rounds"), `since start` the time since the command started (its data loading
    and start-up included; the summary's "total time of the command" adds the summary and the report).
    """

    def __init__(self, rounds: int, console, plain: bool, started: float | None = None):
        self.rounds, self.console, self.plain = rounds, console, plain
        self.started = time.perf_counter() if started is None else started
        self.done = 0  # rounds finished by this command (a resumed run starts later)
        self._bar = None

    def __enter__(self):
        if not self.plain:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn, \
                TimeElapsedColumn, TimeRemainingColumn

            # Redrawn at each round, not by a refresh thread: with no other thread running, the pool
            # engine can fork its workers (fedstack.engine.pool.start_method).
            self._bar = Bar(TextColumn("round"), MofNCompleteColumn(), BarColumn(),
                            TextColumn("{task.fields[figures]}"), TextColumn("since start"), TimeElapsedColumn(),
                            TextColumn("ETA"), TimeRemainingColumn(), console=self.console, auto_refresh=False,
                            get_time=time.perf_counter)
            self._bar.__enter__()
            self._task = self._bar.add_task("train", total=self.rounds, figures="")
            self._bar.tasks[0].start_time = self.started  # elapsed counts from the command's start
        return self

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def __call__(self, record: dict, params=None) -> None:
        figures = ""
        if record.get("test_accuracy") is not None:
            figures = f"acc {record['test_accuracy']:.2%}  loss {record['test_loss']:.4f}"
        self.done += 1
        elapsed = time.perf_counter() - self.started
        rounds_s = record.get("wall_time_s", elapsed)
        eta = rounds_s / self.done * (self.rounds - record["round"])
        line = (f"round {record['round']}/{self.rounds}  {figures}  clients {record['clients']}"
                f"  failures {record['failures']}  rounds {rounds_s:.1f}s  since start {elapsed:.1f}s"
                f"  eta {eta:.1f}s")
        log.info("%s", line)
        if self._bar is not None:
            self._bar.update(self._task, completed=record["round"], figures=figures, refresh=True)
            return
        print(line, flush=True)


if __name__ == "__main__":
    sys.exit(main())
