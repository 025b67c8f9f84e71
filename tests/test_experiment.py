import numpy as np
import pytest

from fedstack.config import load_config
from fedstack.errors import FedstackError
from fedstack.experiment import run_config
from fedstack.store import RunStore

SMALL = ["data.name=digits", "data.num_clients=8", "model.name=mlp", "server.rounds=3",
         "server.clients_per_round=3", "engine.name=local", "seed=5"]


class Crash(Exception):
    pass


def crash_after(round_):
    def callback(record, params):
        if record["round"] == round_:
            raise Crash()
    return callback


def test_a_crashed_run_resumes_after_its_last_round_with_the_same_bits(tmp_path):
    config = load_config(None, SMALL)
    unbroken = run_config(config, tmp_path / "unbroken")
    with pytest.raises(Crash):
        run_config(config, tmp_path / "broken", on_round=[crash_after(2)])
    assert [r["round"] for r in RunStore(tmp_path / "broken" / "store.sqlite").rounds()] == [1, 2]
    resumed = run_config(config, tmp_path / "broken")
    assert np.array_equal(resumed.params, unbroken.params)
    assert [r["round"] for r in resumed.rounds] == [1, 2, 3]
    lines = (tmp_path / "broken" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3


def test_resuming_with_another_config_is_refused(tmp_path):
    with pytest.raises(Crash):
        run_config(load_config(None, SMALL), tmp_path / "run", on_round=[crash_after(1)])
    with pytest.raises(FedstackError, match="another config"):
        run_config(load_config(None, [*SMALL, "client.lr=0.5"]), tmp_path / "run")
