"""Files that must survive a crash or power cut, private files, and a full disk through the real CLI."""

import errno
import json
import os
import resource
import signal
import stat
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from fedstack import cli, files
from fedstack.report import MetricsWriter, read_metrics, write_summary
from fedstack.store import RunStore


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def open_umask():
    """A umask that would leave new files world-readable (and writable): only an explicit mode protects them."""
    old = os.umask(0)
    yield
    os.umask(old)


@pytest.fixture
def synced(monkeypatch):
    """Records os.fsync and os.replace calls, in order, as ("fsync", path or None) and ("replace", destination)."""
    calls = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd") else None))
        return real_fsync(fd)

    def replace(src, dst, **kw):
        calls.append(("replace", str(dst)))
        return real_replace(src, dst, **kw)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return calls


def test_write_atomic_fsyncs_the_data_then_renames_then_fsyncs_the_directory(tmp_path, synced, open_umask):
    path = tmp_path / "f.json"
    files.write_atomic(path, b"new")
    assert path.read_bytes() == b"new" and mode(path) == 0o644
    kinds = [kind for kind, _ in synced]
    assert kinds == ["fsync", "replace", "fsync"]
    if synced[0][1] is not None:
        assert synced[0][1].startswith(str(tmp_path / ".f.json.")) and synced[2][1] == str(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json"]


def test_write_atomic_private_file_is_never_readable_by_others(tmp_path, open_umask):
    path = tmp_path / "secret"
    path.write_bytes(b"old")
    path.chmod(0o666)
    files.write_atomic(path, b"new", private=True)
    assert path.read_bytes() == b"new" and mode(path) == 0o600


def test_failed_write_leaves_the_old_file_and_names_it(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    path.write_text("old")

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError) as e:
        files.write_atomic(path, b"new")
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(path)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["summary.json"]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_append_line_reports_a_full_device_naming_the_file():
    with pytest.raises(OSError) as e:
        files.append_line("/dev/full", "x")
    assert e.value.errno == errno.ENOSPC and e.value.filename == "/dev/full"


def test_summary_is_replaced_by_a_rename_not_rewritten_in_place(tmp_path):
    old = {"status": "running"}
    write_summary(tmp_path, old)
    os.link(tmp_path / "summary.json", tmp_path / "before")  # a second name for the old file's inode
    write_summary(tmp_path, {"status": "finished", "rounds": 2})
    assert json.loads((tmp_path / "summary.json").read_text()) == {"status": "finished", "rounds": 2}
    assert json.loads((tmp_path / "before").read_text()) == old  # an in-place write would have changed it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["before", "summary.json"]


def test_metrics_lines_are_fsynced_and_a_torn_last_line_is_skipped(tmp_path, synced):
    writer = MetricsWriter(tmp_path, [{"round": 1}])
    writer({"round": 2})
    assert synced[-1][0] == "fsync"  # the appended round is on disk before the next one starts
    assert read_metrics(tmp_path) == [{"round": 1}, {"round": 2}]
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"round": 3, "test_acc')  # a crash in the middle of an append
    assert read_metrics(tmp_path) == [{"round": 1}, {"round": 2}]
    MetricsWriter(tmp_path, [{"round": 1}, {"round": 2}])({"round": 3})  # resumed: the file is rewritten
    assert read_metrics(tmp_path) == [{"round": 1}, {"round": 2}, {"round": 3}]


def test_store_and_its_wal_files_are_the_owners_only(tmp_path, open_umask):
    store = RunStore(tmp_path / "store.sqlite")
    store.put(1, {0: {"c": np.ones(3, dtype=np.float32)}})
    store.finish_round(1, {"round": 1}, np.zeros(4))
    made = {p.name: mode(p) for p in tmp_path.iterdir()}
    store.close()
    assert made == {"store.sqlite": 0o600, "store.sqlite-wal": 0o600, "store.sqlite-shm": 0o600}


def test_a_world_readable_store_is_made_private_when_opened(tmp_path, open_umask):
    path = tmp_path / "store.sqlite"
    RunStore(path).close()
    path.chmod(0o644)
    again = RunStore(path)
    assert again.checkpoint() is None and mode(path) == 0o600
    again.close()


def test_client_state_file_is_private_and_replaced_whole(tmp_path, open_umask, synced):
    from fedstack.transport.client import Client

    path = tmp_path / "state.npz"
    path.write_bytes(b"an older state")
    path.chmod(0o644)
    device = SimpleNamespace(state_path=path, state={"control": np.arange(5, dtype=np.float32)})
    Client._save_state(device)
    assert mode(path) == 0o600 and [kind for kind, _ in synced] == ["fsync", "replace", "fsync"]
    with np.load(path, allow_pickle=False) as saved:
        np.testing.assert_array_equal(saved["control"], np.arange(5, dtype=np.float32))
    assert [p.name for p in tmp_path.iterdir()] == ["state.npz"]


def test_ckks_keys_are_fsynced_and_the_secret_is_private(tmp_path, open_umask, synced):
    from fedstack import he

    public, secret = he.write_keys(tmp_path)
    assert mode(secret) == 0o600 and mode(public) == 0o644
    assert [kind for kind, _ in synced] == ["fsync", "replace", "fsync"] * 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([public.name, secret.name])


# --------------------------------------------------------------------------------------------- full disk


def _file_size_limit(limit: int):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_full_disk_in_a_run_is_one_line_and_exit_2(tmp_path):
    # No file may grow past 20 kB: the run store's first transaction cannot be written, as on a full disk.
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "fedstack.cli", "run", "--set", "data.name=digits", "--set", "data.num_clients=4",
         "--set", "model.name=logreg", "--set", "server.clients_per_round=2", "--set", "engine.name=local",
         "--set", "server.rounds=1", "--out", str(out), "--quiet"],
        capture_output=True, text=True, timeout=300, preexec_fn=_file_size_limit(20_000))
    err = proc.stderr.strip()
    assert proc.returncode == 2, proc.stderr
    assert err.startswith(f"error: {out / 'store.sqlite'}: ") and "\n" not in err and "Traceback" not in err
    assert mode(out / "store.sqlite") == 0o600


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_storage_errors_are_one_line_unless_debug(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(cli, "cmd_report", lambda args: files.append_line("/dev/full", "x"))
    assert cli.main(["report", str(tmp_path)]) == 2
    assert capsys.readouterr().err == "error: /dev/full: No space left on device\n"
    with pytest.raises(OSError):
        cli.main(["--debug", "report", str(tmp_path)])

    def not_storage(args):
        raise ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")

    monkeypatch.setattr(cli, "cmd_report", not_storage)
    with pytest.raises(ConnectionRefusedError):  # not a storage error: a bug or another failure, with its traceback
        cli.main(["report", str(tmp_path)])


def test_a_store_that_is_not_a_database_is_one_line(tmp_path, monkeypatch, capsys):
    path = tmp_path / "store.sqlite"
    path.write_bytes(b"this is not an SQLite database, it only has its name" * 100)
    monkeypatch.setattr(cli, "cmd_report", lambda args: RunStore(path))
    assert cli.main(["report", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"error: {path}: file is not a database\n"
