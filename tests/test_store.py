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


def test_client_state_rewinds_to_what_the_checkpoint_saw(tmp_path):
    store = RunStore(tmp_path / "s.sqlite")
    assert store.get(7) is None
    def state(value):
        return {"trainer": np.full(3, value, np.float32), "codec0.topk": np.full(2, -value, np.float32)}

    store.put(1, {7: state(1.0), 8: state(1.0)})
    store.finish_round(1, {"round": 1}, np.zeros(2, np.float32))
    store.put(2, {7: state(2.0)})
    store.finish_round(2, {"round": 2}, np.zeros(2, np.float32))
    store.put(3, {7: state(3.0)})  # the process dies before round 3 is stored
    assert store.get(7)["trainer"].tolist() == [3.0] * 3
    store.rewind_client_states(store.checkpoint()[0])
    assert store.get(7)["trainer"].tolist() == [2.0] * 3 and store.get(8)["codec0.topk"].tolist() == [-1.0] * 2
    # versions older than the checkpoint's are pruned: one row per client stays
    assert store.db.execute("SELECT COUNT(*) FROM client_state").fetchone() == (2,)
    store.close()
