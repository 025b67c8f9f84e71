"""The run store: one SQLite file per run with its config, round records, latest checkpoint and client state."""

from __future__ import annotations

import io
import json
import sqlite3
from pathlib import Path

import numpy as np

from .files import create_private

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rounds (round INTEGER PRIMARY KEY, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS checkpoint (
    id INTEGER PRIMARY KEY CHECK (id = 0), round INTEGER NOT NULL, params BLOB NOT NULL,
    strategy BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS client_state (
    client_id INTEGER NOT NULL, round INTEGER NOT NULL, state BLOB NOT NULL, PRIMARY KEY (client_id, round));
"""


class _NamedConnection(sqlite3.Connection):
    """A connection whose errors carry its database file as `filename` (as an OSError does), so that
    "database or disk is full" or "disk I/O error" can say which file could not be written."""

    def __init__(self, database, *args, **kwargs):
        super().__init__(database, *args, **kwargs)
        self.filename = str(database)

    def _named(self, call, *args):
        try:
            return call(*args)
        except sqlite3.Error as exc:
            exc.filename = self.filename
            raise

    def execute(self, *args):
        return self._named(super().execute, *args)

    def executemany(self, *args):
        return self._named(super().executemany, *args)

    def executescript(self, *args):
        return self._named(super().executescript, *args)

    def __exit__(self, *exc):  # `with connection:` commits here
        return self._named(super().__exit__, *exc)


class RunStore:
    """Persists a run so that what finished survives a crash or Ctrl-C.

    A round's record and its checkpoint are written in one transaction: after a crash the
    store holds either both or neither. Client state (a few named arrays per client:
    SCAFFOLD's control variate, error-feedback residuals) is written as rounds produce it,
    tagged with its round; a client keeps the newest version at or before the checkpoint plus
    any newer ones, so a resumed run rewinds to exactly the states its checkpoint saw.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        # Client state is derived from the clients' private data: the store is the owner's only. Created
        # 0600 before SQLite opens it; SQLite gives its -wal and -shm files the database file's mode.
        create_private(self.path)
        for side in (self.path.with_name(self.path.name + "-wal"), self.path.with_name(self.path.name + "-shm")):
            if side.exists():  # left by a crash, perhaps by a version that made them world-readable
                side.chmod(0o600)
        self.db = sqlite3.connect(self.path, factory=_NamedConnection)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(SCHEMA)

    def set_meta(self, key: str, value) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    def meta(self, key: str, default=None):
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def finish_round(self, round: int, record: dict, params: np.ndarray,
                     strategy_state: dict[str, np.ndarray] | None = None) -> None:
        """Store a round's record, the parameters and the strategy state it produced, atomically."""
        buffer = io.BytesIO()
        np.savez(buffer, **(strategy_state or {}))
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO rounds VALUES (?, ?)", (round, json.dumps(record)))
            self.db.execute("INSERT OR REPLACE INTO checkpoint VALUES (0, ?, ?, ?)",
                            (round, np.ascontiguousarray(params, dtype=np.float32).tobytes(), buffer.getvalue()))
            # Versions of a client's state older than the one this checkpoint uses are not needed again.
            self.db.execute("DELETE FROM client_state WHERE round < (SELECT MAX(s.round) FROM client_state s "
                            "WHERE s.client_id = client_state.client_id AND s.round <= ?)", (round,))

    def rounds(self) -> list[dict]:
        return [json.loads(r[0]) for r in self.db.execute("SELECT record FROM rounds ORDER BY round")]

    def checkpoint(self) -> tuple[int, np.ndarray] | None:
        """(round, params) of the latest finished round, or None."""
        row = self.db.execute("SELECT round, params FROM checkpoint WHERE id = 0").fetchone()
        return (row[0], np.frombuffer(row[1], dtype=np.float32).copy()) if row else None

    def strategy_state(self) -> dict[str, np.ndarray]:
        """The strategy state saved with the latest checkpoint (empty for stateless strategies)."""
        row = self.db.execute("SELECT strategy FROM checkpoint WHERE id = 0").fetchone()
        if not row:
            return {}
        with np.load(io.BytesIO(row[0])) as saved:
            return {k: saved[k] for k in saved.files}

    def get(self, client_id: int) -> dict[str, np.ndarray] | None:
        """A client's newest state (arrays by name), or None before its first round."""
        row = self.db.execute("SELECT state FROM client_state WHERE client_id = ? ORDER BY round DESC LIMIT 1",
                              (int(client_id),)).fetchone()
        return None if row is None else _array(row[0])

    def put(self, round: int, states: dict[int, dict[str, np.ndarray]]) -> None:
        """Save the states clients ended `round` with."""
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO client_state VALUES (?, ?, ?)",
                                [(int(cid), round, _blob(state)) for cid, state in states.items()])

    def rewind_client_states(self, round: int) -> None:
        """Forget states written after `round` (a crashed run resumes from its checkpoint at `round`)."""
        with self.db:
            self.db.execute("DELETE FROM client_state WHERE round > ?", (round,))

    def close(self) -> None:
        self.db.close()


class MemoryClientStates:
    """Client state kept in a dict, for runs without a store (nothing survives the process)."""

    def __init__(self):
        self.states: dict[int, np.ndarray] = {}

    def get(self, client_id: int) -> dict[str, np.ndarray] | None:
        return self.states.get(int(client_id))

    def put(self, round: int, states: dict[int, dict[str, np.ndarray]]) -> None:
        self.states.update({int(cid): {k: np.array(v) for k, v in state.items()} for cid, state in states.items()})


def _blob(state: dict[str, np.ndarray]) -> bytes:
    if not isinstance(state, dict) or not all(isinstance(v, np.ndarray) for v in state.values()):
        raise TypeError(f"client state must be a dict of NumPy arrays, got {type(state).__name__}")
    buffer = io.BytesIO()
    np.savez(buffer, **state)
    return buffer.getvalue()


def _array(blob: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(blob), allow_pickle=False) as saved:
        return {k: saved[k] for k in saved.files}
