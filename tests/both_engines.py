"""Run one config on the local and the pool engine and check they agree bit for bit."""

import numpy as np

from fedstack.plan import load_config
from fedstack.experiment import run_config


def run_on_both_engines(overrides: list[str], tmp_path):
    """(local history, pool history) of the same config; asserts identical params and round records."""
    results = {}
    for engine in ("local", "pool"):
        config = load_config(None, [*overrides, f"engine.name={engine}", "engine.workers=2"])
        results[engine] = run_config(config, tmp_path / engine)
    local, pool = results["local"], results["pool"]
    assert np.array_equal(local.params, pool.params)
    drop = {"wall_time_s"}
    assert [{k: v for k, v in r.items() if k not in drop} for r in local.rounds] == \
           [{k: v for k, v in r.items() if k not in drop} for r in pool.rounds]
    return local, pool
