import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from fedstack.plan import load_config
from fedstack.engine import PoolEngine
from fedstack.engine.pool import start_method
from fedstack.experiment import simulate
from fedstack.loop import Evaluation
from fedstack.plan import client_side, dataset_of
from fedstack.strategy import FedAvg


@pytest.mark.skipif(sys.platform != "linux", reason="fork is only chosen on Linux")
def test_workers_fork_unless_another_thread_runs():
    assert start_method() == "fork"
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        assert start_method() == "spawn"
    finally:
        stop.set()
        thread.join()


def test_forked_and_spawned_workers_give_the_same_bits():
    config = load_config(None, ["data.name=digits", "data.num_clients=10", "model.name=mlp", "seed=3"])
    dataset = dataset_of(config)
    factory, params0, fit, _ = client_side(config, dataset)
    finals = {}
    for method in ("fork", "spawn"):
        history = simulate(factory, dataset, params0, strategy=FedAvg(fit), rounds=2, clients_per_round=4,
                           engine=PoolEngine(workers=2, start_method=method), seed=3,
                           evaluation=Evaluation(federated=False))
        finals[method] = (history.params, [r["test_loss"] for r in history.rounds])
    assert np.array_equal(finals["fork"][0], finals["spawn"][0])
    assert finals["fork"][1] == finals["spawn"][1]


PARENT = textwrap.dedent("""
    import time
    import numpy as np
    from fedstack.engine import EvalTask, PoolEngine, Workload
    from fedstack.codec import Pipeline
    from fedstack.plan import load_config
    from fedstack.plan import client_side, dataset_of

    config = load_config(None, ["data.name=digits", "data.num_clients=4", "server.clients_per_round=2",
                                 "model.name=logreg"])
    dataset = dataset_of(config)
    factory, params, _, _ = client_side(config, dataset)
    engine = PoolEngine(workers=2, start_method="fork")
    engine.start(Workload(factory, dataset, Pipeline(), 0))
    list(engine.run(params, [EvalTask(0, 10), EvalTask(10, 20)]))
    print(*[w.process.pid for w in engine._pool], flush=True)
    time.sleep(60)
""")


def test_forked_workers_exit_when_their_parent_is_killed():
    """Each worker holds no copy of its siblings' pipe ends, so the parent's death reaches all of them."""
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert len(pids) == 2
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids)


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, dead but not yet reaped by init, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
