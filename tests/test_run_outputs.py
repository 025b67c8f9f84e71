"""What a run leaves for its user: `--version`, run.log, labelled times, train loss, refusal explanations."""

import json
import subprocess
import sys

import fedstack
from fedstack import cli

TINY = ["--set", "data.name=digits", "--set", "data.num_clients=10", "--set", "model.name=logreg",
        "--set", "server.rounds=2", "--set", "server.clients_per_round=3", "--set", "engine.name=local"]


def fedstack_cli(*args):
    return subprocess.run([sys.executable, "-m", "fedstack.cli", *args], capture_output=True, text=True, timeout=300)


def test_version():
    proc = fedstack_cli("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"fedstack {fedstack.__version__}"


def test_a_run_logs_to_run_log_labels_its_times_and_records_train_loss(tmp_path):
    out = tmp_path / "run"
    # Half the clients drop out and every round needs all 3: each round ends with a warning.
    proc = fedstack_cli("run", *TINY, "--set", "systems.dropout=0.5", "--set", "server.min_clients=3",
                        "--set", "server.round_retries=0", "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr

    log = (out / "run.log").read_text()
    assert "WARNING fedstack.server: round 1:" in log and "< server.min_clients=3" in log  # a failure warning
    assert "INFO fedstack.server: round 1: 3 sampled" in log  # INFO records too, which stderr does not show
    assert "INFO fedstack.cli: round 2/2" in log and "fedstack run: 2 rounds into" in log
    assert "INFO" not in proc.stderr

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(isinstance(r["train_loss"], float) and r["train_loss"] > 0 for r in records)
    assert all("dp_clients" not in r and "client_states" not in r for r in records)

    summary = json.loads((out / "summary.json").read_text())
    assert 0 < summary["final"]["wall_time_s"] < summary["total_time_s"] < 300
    assert "deployed" not in summary
    assert "wall time of the rounds (from engine start)" in proc.stdout
    assert "total time of the command (with start-up)" in proc.stdout
    assert "simulated time (device fleet)" in proc.stdout
    assert "since start" in proc.stdout and "elapsed" not in proc.stdout


def test_each_refusal_reason_is_explained_on_its_own_line():
    lines = cli.refusal_lines({"foreign": 1, "stale": 0, "unauthenticated": 2, "something_new": 3})
    assert lines == [
        "refused 1 × foreign: " + cli.REFUSALS["foreign"],
        "refused 3 × something_new: see the warnings in run.log",
        "refused 2 × unauthenticated: " + cli.REFUSALS["unauthenticated"],
    ]
    # Every reason the deployed server counts has an explanation.
    import inspect

    from fedstack.transport import replies, server

    source = inspect.getsource(server) + inspect.getsource(replies)
    for reason in ("unauthenticated", "foreign", "stale", "size", "weight", "malformed", "busy"):
        assert f'"{reason}"' in source and reason in cli.REFUSALS
