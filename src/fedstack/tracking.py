"""Experiment tracking: each round's figures sent to TensorBoard or MLflow as the run goes.

Two callbacks of the round loop, both fed the round's line of metrics.jsonl:

- `TensorBoardTracker` writes TensorBoard event files: every number of the round as a scalar, the
  per-client figures (accuracy by client, each client's fit metrics) as histograms, the config as text.
  Open them with `tensorboard --logdir RUN_DIR/tensorboard`.
- `MLflowTracker` logs the config as the run's params and every number of each round as a metric, to any
  MLflow tracking URI; fedstack passes `sqlite:///RUN_DIR/mlflow.db`. Open it with
  `mlflow ui --backend-store-uri sqlite:///RUN_DIR/mlflow.db`.

What counts as "every number" is `scalars(record)`; the per-client figures are `distributions(record)`.
Both are pure functions of the record, shared by the two trackers. Nested figures are named by their
path joined with "/" ("federated/p10", "failures_by_kind/dropout"), which both tools show as groups.

A tracker is a side effect, never a reason to stop training or to wait: `Failsafe` wraps each one the config
builds, runs it in a process of its own, and makes its first failure (a store that cannot be written, a
tracking server down) one warning after which the run goes on without it.

The packages come with the `tracking` extra (`pip install 'fedstack[tracking]'`); neither needs torch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import numbers
import os
import multiprocessing
import re
import time
from pathlib import Path

import numpy as np

from .extras import require, require_installed
from .loop import Callback

# The per-client maps: many clients, one figure each, which would make a scalar series per client.
# They are summed up as histograms instead (`distributions`).
PER_CLIENT_KEYS = ("by_client", "fit_metrics_by_client")

log = logging.getLogger("fedstack.tracking")


def _number(value) -> float | None:
    """`value` as a finite float, or None for what is not a plottable number (bool, None, NaN, text...)."""
    # bool is an int to Python, but a flag is not a figure to plot; numpy numbers register as numbers.Real.
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def scalars(record: dict) -> dict[str, float]:
    """Every finite number of a round's record, by its path: {"test_accuracy": 0.81, "federated/p10": 0.5,
    "failures_by_kind/dropout": 0.0, "fit_metrics/train_loss": 1.67, ...}.

    Nested dicts are walked, their keys joined with "/". Left out: "round" (it is the step), the per-client
    maps ("by_client", "fit_metrics_by_client": see `distributions`), lists, text, bools, None and
    non-finite numbers (a NaN loss is a missing point, not a point).
    """
    found: dict[str, float] = {}

    def walk(prefix: str, tree: dict) -> None:
        for key, value in tree.items():
            if key in PER_CLIENT_KEYS:
                continue
            name = f"{prefix}{key}"
            if isinstance(value, dict):
                walk(f"{name}/", value)
            elif (number := _number(value)) is not None:
                found[name] = number

    walk("", {key: value for key, value in record.items() if key != "round"})
    return found


def distributions(record: dict) -> dict[str, list[float]]:
    """The per-client figures of a round's record, as lists of finite numbers (one per client that has it):

    - "<name>/by_client" for each evaluation with a `by_client` map ("federated", "personalized",
      "personal", "local_only", ...): each client's figure;
    - "fit_metrics_by_client/<metric>" for each metric clients reported from training ("train_loss", ...).

    Empty lists are left out.
    """
    found: dict[str, list[float]] = {}
    for key, value in record.items():
        if isinstance(value, dict) and isinstance(value.get("by_client"), dict):
            found[f"{key}/by_client"] = _numbers(value["by_client"].values())
    by_metric: dict[str, list[float]] = {}
    for metrics in (record.get("fit_metrics_by_client") or {}).values():
        for metric, value in (metrics if isinstance(metrics, dict) else {}).items():
            if (number := _number(value)) is not None:
                by_metric.setdefault(f"fit_metrics_by_client/{metric}", []).append(number)
    found.update(by_metric)
    return {name: values for name, values in found.items() if values}


def _numbers(values) -> list[float]:
    """The finite numbers among `values`, in order."""
    return [number for value in values if (number := _number(value)) is not None]


def _config_text(config: dict) -> str:
    """The config as a JSON block in markdown, which TensorBoard's text dashboard renders as code."""
    return "```json\n" + json.dumps(config, indent=2, default=str) + "\n```"


class Tracker(Callback):
    """An experiment tracker: a callback, plus `prepare` — what it can do before the run starts (import its
    library, open its store), which `Failsafe` calls first, in the tracker's own process, while the run gets
    ready. `reads_params`: whether it reads the global model each round (else `Failsafe` does not send it)."""

    reads_params = False

    def prepare(self) -> None:
        """Work that needs nothing of the run yet: called once, before any other hook."""


class Failsafe(Callback):
    """A `Tracker` kept off the run's path: it runs in a process of its own (spawned when this is built, so its
    imports and its store's set-up overlap the run's own start and never hold up a round; a process, unlike a
    thread, leaves the pool engine free to fork its workers), fed each hook through a pipe, in order. Its
    first exception in any hook is one warning naming `what`, after which it is left out for the rest of the
    run; training never stops for it.

    `on_end` and `on_results` wait (up to `wait_s` each) until it has done everything sent, so a finished
    command has logged everything; a tracker still busy then is left behind with a warning.
    """

    def __init__(self, tracker: Tracker, what: str, wait_s: float = 60.0):
        self.what, self.wait_s, self.reads_params = what, wait_s, tracker.reads_params
        self.failed: str | None = None  # why it stopped, once it has
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: no state, locks or threads copied
        self._conn, theirs = context.Pipe()
        self._process = context.Process(target=_serve_tracker, args=(tracker, theirs), daemon=True,
                                        name=f"fedstack-{type(tracker).__name__}")
        self._process.start()
        theirs.close()
        self._closed = False

    def on_start(self, rounds, start_round: int) -> None:
        self._send("on_start", rounds, start_round)

    def on_round(self, record: dict, params: np.ndarray) -> None:
        self._send("on_round", record, params if self.reads_params else None)

    def on_end(self, status: str) -> None:
        self._send("on_end", status, wait=True)

    def on_results(self, run_dir: Path) -> None:
        self._send("on_results", Path(run_dir), wait=True)
        self.close()

    def close(self) -> None:
        """Let the tracker's process end (after what was sent), and wait for it briefly."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError):
            self._conn.send(None)
        self._process.join(timeout=self.wait_s)
        if self._process.is_alive():
            self._process.terminate()
        self._conn.close()

    def _send(self, hook: str, *args, wait: bool = False) -> None:
        if self.failed is not None or self._closed:
            return
        try:
            self._conn.send((hook, args, wait))
        except OSError:  # its process is gone (killed, out of memory): what it said, else that
            self._read(0.0)
            self._fail(self.failed or "its process ended")
            return
        self._read(self.wait_s if wait else 0.0, until_done=wait)

    def _read(self, timeout: float, until_done: bool = False) -> None:
        """Take what the tracker's process said — a failure, or that it is done — waiting up to `timeout`
        for it to be done."""
        end = time.monotonic() + timeout
        while self._conn.poll(max(0.0, end - time.monotonic())):
            try:
                kind, detail = self._conn.recv()
            except (EOFError, OSError):
                self._fail(self.failed or "its process ended")
                return
            if kind == "failed":
                self._fail(detail)
                return
            if kind == "done" and until_done:
                return
        if until_done:
            log.warning("%s is still busy after %g s; the run ends without waiting for it", self.what, self.wait_s)

    def _fail(self, why: str) -> None:
        if self.failed is None:
            log.warning("%s failed, the run goes on without it: %s", self.what, why)
        self.failed = why


def _serve_tracker(tracker: Tracker, conn) -> None:
    """The tracker's process: `prepare`, then each hook the run sends, until it sends None or goes away. Its
    first failure is sent back, and nothing more is done."""
    logging.getLogger().setLevel(logging.WARNING)
    failed = False

    def attempt(hook, *args) -> None:
        nonlocal failed
        if failed:
            return
        try:
            hook(*args)
        except Exception as exc:  # told to the run, which warns once and goes on
            failed = True
            conn.send(("failed", " ".join(str(exc).split())[:300] or type(exc).__name__))

    attempt(tracker.prepare)
    hooks = {"on_start": tracker.on_start, "on_round": tracker.on_round, "on_end": tracker.on_end,
             "on_results": tracker.on_results}
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        hook, args, wait = message
        attempt(hooks[hook], *args)
        if wait:
            conn.send(("done", None))


class TensorBoardTracker(Tracker):
    """Writes each round to TensorBoard event files in `log_dir`: scalars (`scalars`) and histograms
    (`distributions`) at step = the round, and `config` once per start as text under the tag "config".

    It uses only the `tensorboard` package (its summary protos and event file writer), not torch or
    TensorFlow. Events are flushed after each round, so a TensorBoard already open sees the run live.

    A resumed run appends a new event file to the same directory. What an interrupted run had logged from
    the resumed run's first round on is superseded (those rounds are done again): TensorBoard's Rust data
    server drops it as the steps go back; its Python reader (`--load_fast=false`) by the session-start
    marker each start writes at its first round.
    """

    def __init__(self, log_dir: Path | str, config: dict | None = None):
        self.log_dir = Path(log_dir)
        self.config = config
        # Checked now, so a missing package stops the run before its first round, not after it.
        require_installed("tensorboard", "tracking", "TensorBoard tracking")
        self._writer = None  # an EventFileWriter while the run is going

    def prepare(self) -> None:
        """Import TensorBoard's writer and protos."""
        import tensorboard.summary.writer.event_file_writer  # noqa: F401
        import tensorboard.plugins.histogram.summary_v2  # noqa: F401

    def on_start(self, rounds: int | None, start_round: int) -> None:
        """Open a new event file, mark the (re)start at `start_round`, and write the config."""
        from tensorboard.compat.proto.event_pb2 import SessionLog
        from tensorboard.plugins.text.summary_v2 import text_pb
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self._close()
        self._writer = EventFileWriter(str(self.log_dir))
        self._write(start_round, session_log=SessionLog(status=SessionLog.START))
        if self.config is not None:
            # One step before the first round, so the restart marker above never discards it.
            self._write(start_round - 1, summary=text_pb("config", _config_text(self.config)))
        self._writer.flush()

    def on_round(self, record: dict, params: np.ndarray) -> None:
        """Write the round's scalars and histograms as one event at step = its round, and flush it."""
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.plugins.histogram.summary_v2 import histogram_pb
        from tensorboard.plugins.scalar.summary_v2 import scalar_pb

        step = int(record["round"])
        if self._writer is None:  # a loop that does not call on_start: start at this round
            self.on_start(None, step)
        summary = Summary()
        for tag, value in scalars(record).items():
            summary.value.extend(scalar_pb(tag, value).value)
        for tag, values in distributions(record).items():
            summary.value.extend(histogram_pb(tag, values).value)
        self._write(step, summary=summary)
        self._writer.flush()

    def on_end(self, status: str) -> None:
        """Flush and close the event file."""
        self._close()

    def _close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _write(self, step: int, **fields) -> None:
        """One event (a summary, a session marker) at `step`, timed now."""
        from tensorboard.compat.proto.event_pb2 import Event

        self._writer.add_event(Event(wall_time=time.time(), step=step, **fields))


# MLflow's limits on what one log_batch call, a name and a param value may hold (mlflow.utils.validation).
MLFLOW_MAX_METRICS_PER_BATCH = 1000
MLFLOW_MAX_PARAMS_PER_BATCH = 100
MLFLOW_MAX_KEY_LENGTH = 250
MLFLOW_MAX_PARAM_LENGTH = 6000

# What the end of a run (Callback.on_end's status) is to MLflow. Stopped runs (the privacy budget spent)
# ended as planned; anything not listed (a failure) is FAILED.
MLFLOW_STATUS = {"finished": "FINISHED", "stopped": "FINISHED", "interrupted": "KILLED"}


def mlflow_name(name: str) -> str:
    """`name` as an MLflow metric or param name: only letters, digits and `_-. /`, no empty, "." or ".."
    path parts (MLflow refuses names that are not normalised paths), at most 250 characters."""
    name = re.sub(r"[^A-Za-z0-9_\-. /]", "_", name)
    name = "/".join(part for part in name.split("/") if part not in ("", ".", ".."))
    return name[:MLFLOW_MAX_KEY_LENGTH] or "_"


def flat_params(config: dict, prefix: str = "") -> dict[str, str]:
    """The config's leaves as MLflow params: dotted keys ("server.rounds"), values as text ("10"; JSON for
    anything but a string: true, null, [1, 2]) cut to MLflow's 6000 characters."""
    params: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            params.update(flat_params(value, f"{name}."))
        else:
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            params[mlflow_name(name)] = text[:MLFLOW_MAX_PARAM_LENGTH]
    return params


@contextlib.contextmanager
def _quiet_mlflow():
    """Hide MLflow's INFO lines ("Creating initial MLflow database tables...") while the block runs,
    leaving its warnings and errors, and its loggers as they were after."""
    loggers = [logging.getLogger(name) for name in ("mlflow", "alembic")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


class MLflowTracker(Tracker):
    """Logs a run to MLflow at `tracking_uri` (e.g. "sqlite:///runs/demo/mlflow.db"; MLflow's plain file
    store is not supported by recent versions), in `experiment` (created if missing):

    - at each start, a new MLflow run named `run_name`, tagged "fedstack.start_round" (1, or the round a
      resumed run goes on from), with `config` as params ("server.rounds" = "10");
    - each round, every figure of `scalars(record)` as a metric at step = the round, in one batch;
    - at the end, the run's status: FINISHED (finished, stopped), KILLED (interrupted), FAILED (otherwise);
    - once the run's files are written, summary.json and report.png as the MLflow run's artifacts.

    An experiment it creates in a SQLite store keeps its artifacts in `mlartifacts/` beside the database
    (MLflow's default would be ./mlruns wherever the command ran). MLflow's usage telemetry is off unless
    MLFLOW_DISABLE_TELEMETRY says otherwise (nothing leaves the machine unasked), and a tracking server is
    asked at most 2 more times, 10 s each (MLflow's defaults, 7 retries of 120 s, would stall training for
    minutes when it is down) unless MLFLOW_HTTP_REQUEST_MAX_RETRIES / _TIMEOUT are set.

    `run_id` is the MLflow run being logged to (None before the start). Errors from MLflow are raised, not
    hidden: `Failsafe` turns them into a warning.
    """

    def __init__(self, tracking_uri: str, experiment: str = "fedstack", run_name: str | None = None,
                 config: dict | None = None):
        self.tracking_uri, self.experiment, self.run_name, self.config = tracking_uri, experiment, run_name, config
        for name, value in (("MLFLOW_DISABLE_TELEMETRY", "true"), ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2"),
                            ("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")):
            os.environ.setdefault(name, value)  # read by MLflow when it is used: set before the import
        # Checked now, so a missing package stops the run before its first round; imported by `prepare` (in
        # Failsafe's process: MLflow takes a second or two to import)
        require_installed("mlflow", "tracking", "MLflow tracking")
        self._mlflow = self._entities = None
        self._client = None  # an MlflowClient once prepared
        self._experiment_id: str | None = None
        self._active = False  # between on_start and on_end
        self.run_id: str | None = None

    def prepare(self) -> None:
        """Import MLflow, open the store (a new SQLite database gets its tables: a second or so) and create
        or find the experiment."""
        if self.tracking_uri.startswith("sqlite:///"):  # SQLite makes the database file, not its folder
            Path(self.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self._mlflow = require("mlflow", "tracking", "MLflow tracking")
        self._entities = require("mlflow.entities", "tracking", "MLflow tracking")
        with _quiet_mlflow():  # the first call on a new database creates its tables, which MLflow announces
            self._client = client = self._mlflow.MlflowClient(self.tracking_uri)
            found = client.get_experiment_by_name(self.experiment)
            self._experiment_id = found.experiment_id if found is not None else \
                client.create_experiment(self.experiment, artifact_location=self._artifact_location())

    def on_start(self, rounds: int | None, start_round: int) -> None:
        """Start a new MLflow run in the experiment and log the config as params."""
        if self._client is None:
            self.prepare()
        client = self._client
        with _quiet_mlflow():
            tags = {"fedstack.start_round": str(start_round)}
            if rounds is not None:
                tags["fedstack.rounds"] = str(rounds)
            self.run_id = client.create_run(self._experiment_id, run_name=self.run_name, tags=tags).info.run_id
        self._active = True
        params = [self._entities.Param(key, value) for key, value in flat_params(self.config or {}).items()]
        for chunk in _chunks(params, MLFLOW_MAX_PARAMS_PER_BATCH):
            client.log_batch(self.run_id, params=chunk)

    def on_round(self, record: dict, params: np.ndarray) -> None:
        """Log the round's scalars as metrics at step = its round (one log_batch call, unless over 1000)."""
        step = int(record["round"])
        if not self._active:  # a loop that does not call on_start: start at this round
            self.on_start(None, step)
        timestamp = int(time.time() * 1000)
        # Keyed by MLflow's name, so two figures that the renaming makes alike are logged once, not refused.
        named = {mlflow_name(name): value for name, value in scalars(record).items()}
        metrics = [self._entities.Metric(name, value, timestamp, step) for name, value in named.items()]
        for chunk in _chunks(metrics, MLFLOW_MAX_METRICS_PER_BATCH):
            self._client.log_batch(self.run_id, metrics=chunk)

    def on_end(self, status: str) -> None:
        """Mark the MLflow run as ended with the run's status (if it was started)."""
        if self._active:
            self._client.set_terminated(self.run_id, MLFLOW_STATUS.get(status, "FAILED"))
            self._active = False  # run_id stays, to find the run by and to keep its files

    def on_results(self, run_dir: Path) -> None:
        """Keep the run's summary.json and report.png (those written) as the MLflow run's artifacts."""
        if self.run_id is None:
            return
        for name in ("summary.json", "report.png"):
            if (Path(run_dir) / name).is_file():
                self._client.log_artifact(self.run_id, str(Path(run_dir) / name))

    def _artifact_location(self) -> str | None:
        """Where a new experiment keeps its artifacts: beside a SQLite database, else the server's choice."""
        if self.tracking_uri.startswith("sqlite:///"):
            return (Path(self.tracking_uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts").as_uri()
        return None


def _chunks(items: list, size: int) -> list[list]:
    """`items` in consecutive lists of at most `size` (none for no items)."""
    return [items[i:i + size] for i in range(0, len(items), size)]
