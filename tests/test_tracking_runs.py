"""`[tracking]` in a real run: `fedstack run` with TensorBoard and MLflow on writes every round's figures where
each tool's own reader finds them; a tracking directory that cannot be written is one line before training;
turning tracking on later resumes the same run."""

import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import pytest

from test_tracking import read_tensorboard, series

pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")

RUN = ["data.name=digits", "server.rounds=3", "server.clients_per_round=4", "eval.federated_every=1"]


def fedstack(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "fedstack.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300, env=env)


def sets(*overrides):
    return [a for o in overrides for a in ("--set", o)]


def test_a_tracked_run_has_every_round_in_tensorboard_and_mlflow(tmp_path):
    import mlflow

    out = tmp_path / "run"
    done = fedstack("run", "--quiet", "--out", str(out), *sets(*RUN, "tracking.tensorboard=true",
                                                                "tracking.mlflow=true"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [1, 2, 3]

    board = read_tensorboard(out / "tensorboard")
    for tag in ("test_accuracy", "bytes_up", "federated/p10"):
        steps, values = series(board, tag)
        assert steps == [1, 2, 3]
        assert values == pytest.approx([r[tag.split("/")[0]] if "/" not in tag else r["federated"]["p10"]
                                        for r in records], rel=1e-6)
    assert "federated/by_client" in board.Tags()["histograms"] or "federated/by_client" in board.Tags()["tensors"]

    client = mlflow.MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "fedstack"]
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.params["server.rounds"] == "3" and run.data.params["data.name"] == "digits"
    history = client.get_metric_history(run.info.run_id, "test_accuracy")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == \
        [(r["round"], pytest.approx(r["test_accuracy"])) for r in records]

    # summary.json and report.png are the MLflow run's artifacts, beside the database (not in ./mlruns)
    stored = {a.path: a.file_size for a in client.list_artifacts(run.info.run_id)}
    assert stored.keys() == {"summary.json", "report.png"}
    assert stored["report.png"] == (out / "report.png").stat().st_size
    kept = json.loads(pathlib.Path(client.download_artifacts(run.info.run_id, "summary.json", str(tmp_path)))
                      .read_text())
    # the command adds its own total time to summary.json after the run
    assert kept == {k: v for k, v in json.loads((out / "summary.json").read_text()).items() if k != "total_time_s"}
    assert run.info.artifact_uri.startswith((out / "mlartifacts").as_uri())
    assert not (tmp_path / "mlruns").exists()

    # Tracking changes no result: the same run without it is the same run (resumed: nothing left to do).
    again = fedstack("run", "--quiet", "--out", str(out), *sets(*RUN))
    assert again.returncode == 0 and "error" not in again.stderr, again.stderr


def test_an_unwritable_tracking_dir_is_one_line_before_training(tmp_path):
    (tmp_path / "file").write_text("a file where the tracking folder should go")  # unwritable even for root
    where = tmp_path / "file" / "tb"
    done = fedstack("run", "--quiet", "--out", str(tmp_path / "run"),
                    *sets(*RUN, "tracking.tensorboard=true", f"tracking.dir={where}"))
    assert done.returncode == 2
    line = f"error: config key 'tracking.dir': cannot write to {where}: Not a directory"
    assert done.stderr.strip().splitlines() == [line]
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_a_tracking_server_that_is_down_is_one_warning_and_the_run_finishes(tmp_path):
    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = tmp_path / "run"
    started = time.monotonic()
    # fedstack's retry count (2), without MLflow's waits between the tries: the test need not sleep through them
    done = fedstack("run", "--out", str(out), *sets(*RUN, "tracking.mlflow=true",
                                                     f"tracking.mlflow_uri=http://127.0.0.1:{port}"),
                    env={**os.environ, "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0"})
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if "MLflow tracking" in line]
    assert len(warnings) == 1 and f"MLflow tracking to http://127.0.0.1:{port} failed" in warnings[0], done.stderr
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [1, 2, 3] and json.loads((out / "summary.json").read_text())
    assert time.monotonic() - started < 120  # a few quick retries, not MLflow's minutes of them
