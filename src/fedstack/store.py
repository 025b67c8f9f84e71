"""The run store: one SQLite file per run with its config, round records and latest checkpoint."""

from __future__ import annotations

import io
import json
import sqlite3
from pathlib import Path

import numpy as np

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rounds (round INTEGER PRIMARY KEY, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS checkpoint (
    id INTEGER PRIMARY KEY CHECK (id = 0), round INTEGER NOT NULL, params BLOB NOT NULL,
    strategy BLOB NOT NULL);
"""


class RunStore:
    """Persists a run so that what finished survives a crash or Ctrl-C.

    A round's record and its checkpoint are written in one transaction: after a crash the
    store holds either both or neither.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.db = sqlite3.connect(self.path)
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

    def close(self) -> None:
        self.db.close()
