import sqlite3

import numpy as np

from fedstack.store import RunStore


def test_rounds_and_checkpoint_survive_reopening(tmp_path):
    path = tmp_path / "store.sqlite"
    store = RunStore(path)
    store.set_meta("config", {"seed": 3})
    for r in (1, 2):
        store.finish_round(r, {"round": r, "test_accuracy": r / 10}, np.full(4, r, np.float32))
    store.close()

    again = RunStore(path)
    assert again.meta("config") == {"seed": 3}
    assert [rec["round"] for rec in again.rounds()] == [1, 2]
    rnd, params = again.checkpoint()
    assert rnd == 2 and params.tolist() == [2.0] * 4
    again.close()
    # it is a plain SQLite file any tool can read
    assert sqlite3.connect(path).execute("SELECT COUNT(*) FROM rounds").fetchone() == (2,)


def test_empty_store_has_no_checkpoint(tmp_path):
    assert RunStore(tmp_path / "s.sqlite").checkpoint() is None
