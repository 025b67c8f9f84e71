"""The Ray runs of tests/engine/test_ray.py, each in network namespaces of its own, reported as JSON.

    python tests/ray_runs.py engines OUT          # a Ray the engine starts: same bits as local and pool
    python tests/ray_runs.py own OUT              # a Ray of our own: user parts, personal, BatchNorm; faults
    python tests/ray_runs.py cluster OUT ADDRESS  # the Ray cluster at ADDRESS: same bits, both nodes used,
                                                  # an actor killed mid-task

Ray binds to the machine's network address, where only loopback may be used: `run_engines` runs
`engines` and `own` side by side, each in a namespace with only loopback, `run_cluster` starts two Ray
nodes in two namespaces joined by a veth pair and runs `cluster` on the head's; both end every process in
them afterwards.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from user_parts import REGRESSION

# Same seed, a strategy with client state (SCAFFOLD), an error-feedback codec (topk), central and
# federated evaluation: every kind of task goes through the engine.
ENGINES_RUN = ["data.name=digits", "data.num_clients=12", "model.name=cnn", "server.rounds=3",
               "server.clients_per_round=5", "seed=7", "server.strategy=scaffold", 'codec.pipeline=["topk"]',
               "codec.topk_fraction=0.1", "engine.workers=2"]
# A user's own parts named in TOML (issue 20): a regression network with BatchNorm, its own loader of
# real-valued targets, its own metrics and their aggregation, a cosine learning-rate schedule and more
# epochs in the first round; federated evaluation on the clients' held-out splits.
USER_RUN = ['model.name="userparts:make_model"', 'data.name="userparts:load"', 'model.task="regression"',
            'model.metrics="userparts:metrics"', 'eval.metrics_aggregation="userparts:aggregate"',
            'data.partition="iid"', "data.num_clients=6", "server.clients_per_round=4", "server.rounds=3",
            "client.lr=0.05", 'client.lr_schedule="cosine"', "client.epochs_by_round=[[1, 2]]",
            "eval.federated=true", "engine.workers=2"]
# Personalised (FedRep: a personal head, alternating frozen parts) and clustered (CFL: a split, each client
# training its cluster's slice of the stacked models) training on planted label permutations.
PERSONAL_RUN = ["data.name=digits", "data.num_clients=6", "server.clients_per_round=6", "server.rounds=3",
                "data.partition=clusters", "data.clusters=2", "data.cluster_transform=permute_labels",
                "model.name=mlp", "personal.head_epochs=2", "personal.cfl_warmup=2", "personal.cfl_eps1=10",
                "personal.cfl_eps2=0.01", "engine.workers=2"]
CODED_RUN = ["data.name=digits", "data.num_clients=6", "server.clients_per_round=6", "server.rounds=3",
             "data.partition=iid", "model.name=rff", "server.strategy=coded", "coded.features=50",
             "coded.redundancy=0.2", "systems.profile=heterogeneous", "engine.workers=2"]
# Contribution scores (issue 24): each coalition's model evaluated on validation rows through the engine.
CONTRIBUTION_RUN = ["data.name=digits", "data.num_clients=6", "server.clients_per_round=4", "server.rounds=2",
                    "model.name=logreg", 'contribution.method=["gtg", "loo"]', "contribution.validation_examples=300",
                    "eval.federated=false", "engine.workers=2"]
# A run with a deadline, over-selection and dropouts: the round loop that depends on outcomes most.
KILLED_RUN = ["data.name=digits", "model.name=logreg", "data.num_clients=20", "server.clients_per_round=4",
              "server.rounds=3", "systems.profile=heterogeneous", "systems.dropout=0.2", "server.deadline_s=3",
              "server.overselect=0.5"]


def same(rounds: list[dict]) -> list[dict]:
    """Round records without what depends on timing (the wall time, the seconds contribution scoring took)."""
    def untimed(value):
        if isinstance(value, dict):
            return {k: untimed(v) for k, v in value.items() if k not in ("wall_time_s", "seconds")}
        return value
    return [untimed(r) for r in rounds]


def history_json(history) -> dict:
    return {"params": history.params.tolist(), "rounds": same(history.rounds)}


# -- trainers that misbehave on purpose (pickled by value: this file runs as __main__) --------------

class KillOnce:
    """A trainer whose actor kills itself (kill -9) on its third fit, once in the whole run."""

    def __init__(self, marker: str, factory):
        self.marker, self.inner, self.fits = marker, factory(), 0

    def fit(self, params, data, config, state=None):
        self.fits += 1
        if self.fits == 3:
            try:
                os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL))  # only the first actor to get here
            except FileExistsError:
                pass
            else:
                os.kill(os.getpid(), signal.SIGKILL)
        return self.inner.fit(params, data, config, state)

    def evaluate(self, params, x, y):
        return self.inner.evaluate(params, x, y)


class SlowTrainer:
    """Sleeps, then returns an update that encodes the client's first example; fails without data;
    kills its own process whenever it trains on example `doomed`."""

    def __init__(self, doomed: int = -1):
        self.doomed = doomed

    def fit(self, params, data, config, state=None):
        from fedstack.client import FitResult

        time.sleep(0.1)
        if data.num_examples == 0:
            raise ValueError("no data")
        if int(data.train_idx[0]) == self.doomed:
            os.kill(os.getpid(), signal.SIGKILL)
        return FitResult(np.full(params.shape, float(data.train_idx[0]), np.float32), data.num_examples)

    def evaluate(self, params, x, y):
        from fedstack.client import EvalResult

        return EvalResult(float(params.sum()), 0, len(y))


def broken_factory():
    raise ImportError("no such model library")


def slow_workload(factory=SlowTrainer, num_clients=8):
    from fedstack.codec import Pipeline
    from fedstack.data import FederatedDataset
    from fedstack.engine import Workload

    x = np.zeros((num_clients, 1), np.float32)
    y = np.zeros(num_clients, np.int64)
    ds = FederatedDataset.from_arrays(x, y, x[:2], y[:2], num_clients=num_clients, partition="iid", holdout=0)
    return Workload(factory, ds, Pipeline(), seed=0)


def fit_tasks(n):
    from fedstack.client import FitConfig
    from fedstack.strategy import Task

    return [Task(1, i, FitConfig()) for i in range(n)]


def outcomes_json(outcomes) -> list[dict]:
    return [{"client": o.task.client_id, "error": o.error,
             "value": None if o.value is None else float(np.frombuffer(o.value.payload, np.float32)[0])}
            for o in outcomes]


# -- the runs ------------------------------------------------------------------------------------

class Laps:
    """Records into `seconds` the time since the previous lap, by name."""

    def __init__(self, seconds: dict):
        self.seconds, self.last = seconds, time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name], self.last = round(now - self.last, 2), now


def batchnorm_trainer():
    """A model with BatchNorm: floating running statistics, federated with the weights, and an integer
    counter that is not. Module-level, so pool workers and Ray actors can build it."""
    import torch

    from fedstack.client import TorchTrainer

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.BatchNorm1d(16),
                                torch.nn.ReLU(), torch.nn.Linear(16, 10))
    return TorchTrainer(model)


def batchnorm_run(engine, workers: int = 2):
    """Three FedAvg rounds of the BatchNorm model on digits: (final params, test accuracies)."""
    from fedstack.data import build_dataset
    from fedstack.engine import make_engine
    from fedstack.experiment import simulate
    from fedstack.loop import Evaluation
    from fedstack.plan import initial_params

    dataset = build_dataset("digits", num_clients=6, partition="iid", alpha=0.5, seed=0)
    history = simulate(batchnorm_trainer, dataset, initial_params(batchnorm_trainer, 0), rounds=3,
                       clients_per_round=4, engine=make_engine(engine, workers) if isinstance(engine, str) else engine,
                       evaluation=Evaluation(federated=False))
    return history.params, [r["test_accuracy"] for r in history.rounds]


def simulate_config(config, engine, trainer_factory=None):
    """`config`'s run through fedstack.experiment.simulate on `engine` (a name or an Engine)."""
    from fedstack.engine import make_engine
    from fedstack.experiment import rules_of, simulate
    from fedstack.loop import Evaluation, Parts
    from fedstack.plan import client_side, dataset_of
    from fedstack.strategy import build_strategy
    from fedstack.systems import build_system

    dataset = dataset_of(config)
    factory, params, fit, _ = client_side(config, dataset)
    s = config.server
    return simulate(trainer_factory(factory) if trainer_factory else factory, dataset, params,
                    strategy=build_strategy(s, fit, dataset.num_clients), rounds=s.rounds,
                    clients_per_round=s.clients_per_round,
                    engine=make_engine(engine, 2) if isinstance(engine, str) else engine, seed=config.seed,
                    rules=rules_of(config), evaluation=Evaluation(federated=False),
                    parts=Parts(system=build_system(config.systems, dataset.num_clients, config.seed)))


def engines(out: Path) -> None:
    """Local, pool and a Ray the engine starts itself on one config."""
    import ray

    from fedstack.plan import load_config
    from fedstack.experiment import run_config

    results: dict = {"seconds": {}}
    lap = Laps(results["seconds"])
    for name in ("local", "pool", "ray"):
        history = run_config(load_config(None, [*ENGINES_RUN, f"engine.name={name}"]), out / name)
        results[name] = history_json(history)
        lap(name)
    results["ray_shut_down"] = not ray.is_initialized()  # the engine stops the Ray it started
    (out / "engines.json").write_text(json.dumps(results))


def own(out: Path) -> None:
    """A Ray of our own: a user's parts, personalised and clustered training, BatchNorm; then faults."""
    import ray

    from fedstack.plan import load_config
    from fedstack.engine import RayEngine
    from fedstack.errors import ConfigError
    from fedstack.experiment import run_config

    results: dict = {"seconds": {}}
    lap = Laps(results["seconds"])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="warning")
    lap("ray.init")
    # the user's own parts, importable from the directory the run starts in (as `fedstack run` is)
    user = out / "user"
    user.mkdir()
    (user / "userparts.py").write_text(REGRESSION)
    os.chdir(user)
    results["user"] = {name: history_json(run_config(load_config(None, [*USER_RUN, f"engine.name={name}"]),
                                                     user / name))
                       for name in ("local", "pool", "ray")}
    os.chdir(out)
    lap("user parts")
    # personalised and clustered training (issue 21): personal parts as client state, spans of stacked models
    results["personal"] = {name: {engine: history_json(run_config(load_config(None, [
        *PERSONAL_RUN, f"server.strategy={name}", f"engine.name={engine}"]), out / f"{name}-{engine}"))
        for engine in ("local", "ray")} for name in ("fedrep", "cfl")}
    lap("personal")
    # coded training (issue 22): parity sets in round 0, a deadline from the load allocation
    results["coded"] = {engine: history_json(run_config(load_config(None, [*CODED_RUN, f"engine.name={engine}"]),
                                                        out / f"coded-{engine}")) for engine in ("local", "ray")}
    lap("coded")
    results["contribution"] = {engine: history_json(run_config(load_config(None, [
        *CONTRIBUTION_RUN, f"engine.name={engine}"]), out / f"contribution-{engine}")) for engine in ("local", "ray")}
    lap("contribution")
    workload = slow_workload()
    parts = list(workload.dataset.train_idx)
    results["first_examples"] = [float(idx[0]) for idx in parts]
    parts[3] = np.array([], dtype=np.int64)  # the trainer raises for client 3
    workload.dataset.train_idx = parts
    # and client 5's actor dies each time it trains it
    workload.trainer_factory = functools.partial(SlowTrainer, doomed=int(parts[5][0]))
    params, accuracies = batchnorm_run(RayEngine(2))  # BatchNorm's statistics through Ray too
    results["batchnorm"] = {"params": params.tolist(), "accuracies": accuracies}
    lap("batchnorm")
    engine = RayEngine(2)
    engine.start(workload)
    try:
        results["doomed"] = outcomes_json(engine.run(np.zeros(4, np.float32), fit_tasks(8)))
        results["doomed_tasks_run"] = sum(engine.tasks_by_node.values())
        for outcome in engine.run(np.ones(4, np.float32), fit_tasks(8)):
            break  # a consumer that stops early; then the next run on the same engine
        results["after_break"] = outcomes_json(engine.run(np.zeros(4, np.float32), fit_tasks(3)))
    finally:
        engine.close()
    lap("doomed")

    engine = RayEngine(1)
    engine.start(slow_workload(broken_factory))
    try:
        list(engine.run(np.zeros(4, np.float32), fit_tasks(2)))
        results["broken"] = None
    except RuntimeError as exc:
        results["broken"] = str(exc)
    finally:
        engine.close()
    try:  # more workers than the Ray has CPUs
        RayEngine(3).start(slow_workload())
        results["too_many"] = None
    except ConfigError as exc:
        results["too_many"] = str(exc)
    lap("broken")
    ray.shutdown()
    lap("ray.shutdown")
    (out / "own.json").write_text(json.dumps(results))


def cluster(out: Path, address: str) -> None:
    """One run on LocalEngine and on the Ray cluster at `address` (with where the tasks ran), and again
    on the cluster with an actor that kills itself mid-task."""
    from fedstack.plan import load_config
    from fedstack.engine import make_engine

    config = load_config(None, [*KILLED_RUN, "engine.name=ray", f"engine.address={address}", "engine.workers=2"])
    results: dict = {"seconds": {}}
    lap = Laps(results["seconds"])
    engine = make_engine(config.engine.name, config.engine.workers, config.engine.address)
    results.update(ray=history_json(simulate_config(config, engine)), tasks_by_node=engine.tasks_by_node)
    lap("ray")
    marker = out / "killed"
    factory = functools.partial(functools.partial, KillOnce, str(marker))
    engine = make_engine(config.engine.name, config.engine.workers, config.engine.address)
    results["killed"] = history_json(simulate_config(config, engine, factory))
    results["killed_marker"] = marker.exists()  # an actor really died mid-task
    lap("killed")
    results["local"] = history_json(simulate_config(config, "local"))
    lap("local")
    (out / "cluster.json").write_text(json.dumps(results))


# -- from the tests: network namespaces, Ray's command line, this file as a subprocess ---------------

PYTHON = sys.executable
RAY = str(Path(sys.executable).with_name("ray"))
HEAD, WORKER, PORT = "10.77.0.1", "10.77.0.2", 6379


def run_engines(out: Path, timeout: float = 300) -> dict:
    """`engines` and `own`, side by side (most of a Ray's start is waiting), each in a namespace with only
    loopback; what they wrote, in one dict."""
    started = time.perf_counter()
    with ThreadPoolExecutor(1) as pool:
        owned = pool.submit(run_alone, "own", out, timeout)
        results = run_alone("engines", out, timeout)
        ours = owned.result()
    results["seconds"] = {**{f"engines: {k}": v for k, v in results["seconds"].items()},
                          **{f"own: {k}": v for k, v in ours.pop("seconds").items()},
                          "total": round(time.perf_counter() - started, 2)}
    return {**results, **ours}


def run_alone(what: str, out: Path, timeout: float) -> dict:
    """`what` (engines or own) in a namespace with only loopback; what it wrote."""
    with namespaces(1, what[0]) as (names, env):
        check(in_namespace(names[0], [PYTHON, __file__, what, str(out)], env, timeout))
    return json.loads((out / f"{what}.json").read_text())


def run_cluster(out: Path, timeout: float = 300) -> dict:
    """A two-node Ray cluster (`ray start`, one CPU per node, a namespace per node) and `cluster` on it."""
    seconds: dict = {}
    lap = Laps(seconds)
    with namespaces(2, "c") as (names, env):
        check(in_namespace(names[0], [RAY, "start", "--head", f"--node-ip-address={HEAD}", f"--port={PORT}",
                                      "--num-cpus=1", "--include-dashboard=false", "--disable-usage-stats"],
                           env, timeout))
        lap("ray start --head")
        check(in_namespace(names[1], [RAY, "start", f"--address={HEAD}:{PORT}", f"--node-ip-address={WORKER}",
                                      "--num-cpus=1", "--disable-usage-stats"], env, timeout))
        lap("ray start --address")
        check(in_namespace(names[0], [PYTHON, __file__, "cluster", str(out), f"{HEAD}:{PORT}"], env, timeout))
        lap("driver")
    lap("cleanup")
    results = json.loads((out / "cluster.json").read_text())
    results["seconds"] = {**seconds, **{f"driver: {k}": v for k, v in results["seconds"].items()}}
    return results


def check(done: subprocess.CompletedProcess) -> None:
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(done.args)} exited with {done.returncode}:\n{done.stderr[-4000:]}")


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def namespaces_available() -> str | None:
    """Why network namespaces cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "making network namespaces needs root"
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2) to make network namespaces"
    probe = f"fsprobe{os.getpid()}"
    try:
        ip("netns", "add", probe)
    except subprocess.CalledProcessError as exc:
        return f"`ip netns add` fails here: {exc.stderr.strip()}"
    ip("netns", "del", probe)
    return None


@contextlib.contextmanager
def namespaces(count: int, label: str):
    """`count` (1 or 2) network namespaces with loopback up, the second joined to the first by a veth
    pair (HEAD and WORKER); on exit every process in them is killed and they are deleted. Yields
    (names, environment for Ray: a short temp dir of its own, no token authentication). Names are
    unique per process and `label`."""
    tag = f"fs{os.getpid()}{label}"
    names = [f"{tag}{letter}" for letter in "ab"[:count]]
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit in 107 chars
    env = {**os.environ, "RAY_TMPDIR": temp, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    made = []
    try:
        for name in names:
            ip("netns", "add", name)
            made.append(name)
            ip("-n", name, "link", "set", "lo", "up")
        if count == 2:
            ip("link", "add", f"{tag}va", "netns", names[0], "type", "veth", "peer", "name", f"{tag}vb",
               "netns", names[1])
            for name, end, address in zip(names, "ab", (HEAD, WORKER)):
                ip("-n", name, "addr", "add", f"{address}/24", "dev", f"{tag}v{end}")
                ip("-n", name, "link", "set", f"{tag}v{end}", "up")
        yield names, env
    finally:
        end_processes(made)
        for name in made:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        shutil.rmtree(temp, ignore_errors=True)


def end_processes(names: list[str]) -> None:
    """Kill every process in the namespaces `names`: all of them ours (Ray's daemons, a driver that
    overran its time). Not `ray stop`: it ends every Ray process on the machine, not only these."""
    def pids():
        listed = [subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout
                  for name in names]
        return [int(pid) for text in listed for pid in text.split()]

    deadline = time.monotonic() + 10
    while (alive := pids()) and time.monotonic() < deadline:
        for pid in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


def in_namespace(namespace: str, command: list[str], env: dict, timeout: float) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["ip", "netns", "exec", namespace, *command], env=env, capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr or ""
        raise AssertionError(f"{' '.join(command)} ran over {timeout} s:\n{stderr[-4000:]}") from None


def main(argv: list[str]) -> None:
    what, out = argv[0], Path(argv[1])
    if what == "engines":
        engines(out)
    elif what == "own":
        own(out)
    elif what == "cluster":
        cluster(out, argv[2])
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
