"""Speed against Flower and pfl, side by side: the default workload in fedstack, Flower, pfl and plain PyTorch.

    python benchmarks/vs_peers.py [--models mlp,cnn] [--peers fedstack,plain,flower1,flower2,pfl1,pfl2]
                                  [--rounds 20] [--repeats 1] [--out benchmarks/runs/vs-peers]

The workload of `fedstack run`: FedAvg on Fashion-MNIST, Dirichlet(0.5) over 100 clients, 10 clients
a round, E = 1, B = 32, SGD lr 0.05, central evaluation on the 10k test set after every round; the
2NN (`mlp`) and the CNN (`cnn`). Peers:

- fedstack: the pool engine, one worker per core (benchmarks/peers/fedstack_run.py);
- plain:    benchmarks/overhead.py's plain_loop, one process (peers/plain_run.py);
- flower1, flower2: Flower's simulation engine on Ray with 1 and 2 actors of one CPU (peers/flower_run.py);
- pfl1, pfl2: Apple's pfl in one process, and two workers started by torchrun (peers/pfl_run.py).

This script writes the shared inputs once to OUT/inputs with fedstack's own loaders: the
Fashion-MNIST arrays (.npy, memory-mapped by the peers), the per-client indices, the 20-round schedule
fedstack draws (UniformSampler(100, seed).sample(r, 10)), the order in which each scheduled client
visits its examples (the shuffle fedstack draws for that round and client) and the initial parameter
vector, so that every peer trains the same batches from the same model. Flower and pfl are installed
on first use into their own virtual environments, benchmarks/.peers/{flower,pfl} (torch 2.13.0 first,
then the framework with torch pinned), reused later; fedstack and plain run in this interpreter.

Every peer runs as a subprocess inside a loopback-only network namespace (`unshare -n`, root needed)
with one torch thread in every process (OMP/MKL_NUM_THREADS=1 and torch.set_num_threads(1)). Measured
per run:
- whole-process wall time: start to exit (imports, data loading, start-up, teardown; fedstack and
  plain build their data with fedstack's loaders, Flower and pfl map the .npy files);
- in-run wall time, which the peer reports: from just before the framework's run starts (after data
  loading; worker/actor start-up included) to the end of the last evaluation;
- peak memory of the whole process tree (workers, actors, raylets, torchrun's agent, ...): summed
  RSS every 50 ms, and summed PSS (/proc/PID/smaps_rollup: a page shared by n processes counts 1/n
  in each, so shared pages count once) whenever RSS reaches a new high and at least every 0.5 s
  (reading PSS walks page tables; at every tick it would take a quarter of a core from the run);
- final test accuracy, and the largest difference of the final parameters from the plain loop's.
Speed ratios use the in-run times; a speed goal against Flower is judged against its faster
configuration. Results: OUT/results.json, each run's output in OUT/logs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
PEERS_DIR = HERE / "peers"
VENVS = HERE / ".peers"
RESULT_PREFIX = "VSP_RESULT "
TORCH = "torch==2.13.0"  # a CPU build on this machine's disk: installed first, then pinned
FRAMEWORKS = {"flower": "flwr[simulation]==1.42.0", "pfl": "pfl[pytorch]==0.6.0"}
ALL_PEERS = ("fedstack", "plain", "flower1", "flower2", "pfl1", "pfl2")
MODEL_NAMES = {"mlp": "2NN", "cnn": "CNN"}
# The goals of the issue: fedstack's in-run time, and how much faster it must be than each peer.
TIME_GOAL_S = {"mlp": 5.2, "cnn": 110.0}
SPEEDUP_GOALS = {"mlp": {"flower": 5.0, "pfl2": 1.35}, "cnn": {"pfl2": 1.08}}
ACCURACY_NOISE = 0.01  # |accuracy difference| taken as noise: the same batches, summed in another order


@dataclass(frozen=True)
class Peer:
    venv: str | None  # None: this interpreter (the project's venv)
    script: str
    args: tuple[str, ...] = ()
    workers: int = 1  # processes torchrun starts (1: no torchrun)


PEERS = {
    "fedstack": Peer(None, "fedstack_run.py", ("--workers", "0")),
    "plain": Peer(None, "plain_run.py"),
    "flower1": Peer("flower", "flower_run.py", ("--actors", "1")),
    "flower2": Peer("flower", "flower_run.py", ("--actors", "2")),
    "pfl1": Peer("pfl", "pfl_run.py"),
    "pfl2": Peer("pfl", "pfl_run.py", workers=2),
}


# --- shared inputs ---------------------------------------------------------------------------------


def write_inputs(folder: Path, model: str, rounds: int) -> dict:
    """Write the workload of `model` (and the data arrays, once) to `folder`; return its description."""
    sys.path.insert(0, str(HERE))
    from common import default_workload
    from fedstack.sampling import UniformSampler
    from fedstack.seeding import int_seed

    config, dataset, _, params0 = default_workload(rounds, [f"model.name={model}"])
    c, s = config.client, config.server
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("x", "y", "x_test", "y_test"):
        path = folder / f"{name if '_' in name else name + '_train'}.npy"
        array = getattr(dataset, name)
        if not (path.exists() and np.array_equal(np.load(path, mmap_mode="r"), array)):
            np.save(path, np.ascontiguousarray(array))
    sampler = UniformSampler(dataset.num_clients, config.seed)
    schedule = np.array([sampler.sample(rnd, s.clients_per_round) for rnd in range(1, s.rounds + 1)], np.int64)
    orders = []
    for rnd, clients in enumerate(schedule, start=1):
        for cid in clients:  # the shuffles of fedstack's batch_order (client.py) for this round and client
            idx = dataset.train_idx[cid]
            rng = np.random.default_rng(int_seed(config.seed, "client", rnd, cid))
            orders.append(np.concatenate([idx[rng.permutation(len(idx))] for _ in range(c.epochs)]))
    np.savez(folder / f"workload-{model}.npz", params0=params0, schedule=schedule,
             client_sizes=np.array([len(i) for i in dataset.train_idx], np.int64),
             client_idx_flat=np.concatenate(dataset.train_idx).astype(np.int64),
             client_idx_offsets=np.concatenate([[0], np.cumsum([len(i) for i in dataset.train_idx])]).astype(np.int64),
             order_flat=np.concatenate(orders).astype(np.int64),
             order_offsets=np.concatenate([[0], np.cumsum([len(o) for o in orders])]).astype(np.int64))
    meta = {"model": model, "rounds": s.rounds, "clients_per_round": s.clients_per_round,
            "num_clients": dataset.num_clients, "epochs": c.epochs, "batch_size": c.batch_size, "lr": c.lr,
            "eval_batch_size": 100, "seed": config.seed, "input_shape": list(dataset.x.shape[1:]),
            "num_classes": dataset.num_classes, "data": config.data.name, "partition": config.data.partition,
            "alpha": config.data.alpha, "num_params": int(params0.size)}
    (folder / f"workload-{model}.json").write_text(json.dumps(meta, indent=1))
    return meta


# --- peers' virtual environments -------------------------------------------------------------------


def venv_python(name: str | None) -> str:
    if name is None:
        return sys.executable
    python = VENVS / name / "bin" / "python"
    marker = VENVS / name / ".installed"
    wanted = f"{TORCH} {FRAMEWORKS[name]}"
    if python.exists() and marker.exists() and marker.read_text() == wanted:
        return str(python)
    print(f"installing {FRAMEWORKS[name]} into {VENVS / name} (once; pip's output in {VENVS / name}.log)", flush=True)
    VENVS.mkdir(exist_ok=True)
    with open(VENVS / f"{name}.log", "w") as log:
        def step(cmd: list[str]) -> None:
            if subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode != 0:
                raise SystemExit(f"`{' '.join(cmd)}` failed; see {log.name}")

        step([sys.executable, "-m", "venv", "--clear", str(VENVS / name)])
        pip = [str(python), "-m", "pip", "install"]
        step([*pip, TORCH])  # first: the local CPU build, not a CUDA download
        step([*pip, TORCH, FRAMEWORKS[name]])  # torch pinned in the same call
    marker.write_text(wanted)
    return str(python)


# --- measuring one run -----------------------------------------------------------------------------


def _parents() -> dict[int, int]:
    """Every process's parent, from one pass over /proc (cheaper than the children of every thread)."""
    parents = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    parents[int(entry.name)] = int(f.read().rsplit(b")", 1)[1].split()[1])
            except (FileNotFoundError, ProcessLookupError, PermissionError, IndexError, ValueError):
                pass
    return parents


def _pss(pid: int) -> int | None:
    """PSS of one process in bytes (None when it is gone): a walk of its page tables, milliseconds."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            line = next((line for line in f if line.startswith("Pss:")), None)
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None if line is None else int(line.split()[1]) * 1024  # no line: a zombie


def _rss(pid: int) -> int | None:
    """RSS of one process in bytes (None when it is gone or a zombie): cheap, from /proc/PID/statm."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            resident = int(f.read().split()[1]) * PAGE
    except (FileNotFoundError, ProcessLookupError, PermissionError, IndexError):
        return None
    return resident or None


PAGE = os.sysconf("SC_PAGE_SIZE")


class TreeMonitor(threading.Thread):
    """The peak memory of a process and all its descendants: summed RSS and summed PSS.

    Every `interval` seconds it sums the RSS of the tree (/proc/PID/statm, cheap); it looks for new
    processes every `find_every` seconds (every process ever seen stays watched until it exits, so
    one reparented to init still counts). PSS (/proc/PID/smaps_rollup, which counts a page shared by
    n processes as 1/n in each) walks page tables, some milliseconds a process: it is summed whenever
    the RSS sum reaches a new high and at least every `pss_every` seconds, but never sooner than
    `duty` allows, so the monitor takes a few percent of one core from the run it measures (at
    every tick it would take a quarter).
    """

    def __init__(self, root: int, interval: float = 0.05, find_every: float = 0.25, pss_every: float = 0.5,
                 duty: float = 0.02):
        super().__init__(daemon=True)
        self.root, self.interval, self.find_every = root, interval, find_every
        self.pss_every, self.duty = pss_every, duty
        self.known: set[int] = {root}
        self.peak_pss = self.peak_rss = self.peak_procs = 0
        self.samples = self.pss_samples = 0
        self.cpu_s = 0.0  # the monitor's own CPU time, taken from the run's cores
        self._last_pss, self._pss_cost, self._last_find = -1e9, 0.0, -1e9
        self._stop_event = threading.Event()

    def find(self) -> None:
        """Add the descendants of the root and of every process seen to `known`."""
        children: dict[int, list[int]] = {}
        for pid, parent in _parents().items():
            children.setdefault(parent, []).append(pid)
        todo = [self.root, *self.known]
        while todo:
            pid = todo.pop()
            for child in children.get(pid, ()):
                if child not in self.known:
                    self.known.add(child)
                    todo.append(child)

    def sample(self) -> None:
        cpu, now = time.thread_time(), time.monotonic()
        if now - self._last_find >= self.find_every:
            self.find()
            self._last_find = now
        rss, alive = 0, []
        for pid in list(self.known):
            value = _rss(pid)
            if value is None:
                if pid != self.root:
                    self.known.discard(pid)
            else:
                alive.append(pid)
                rss += value
        new_high = rss > self.peak_rss
        self.peak_rss, self.peak_procs = max(self.peak_rss, rss), max(self.peak_procs, len(alive))
        self.samples += 1
        due = new_high or now - self._last_pss >= self.pss_every
        if due and now - self._last_pss >= self._pss_cost / self.duty:
            start = time.thread_time()
            pss = sum(v for v in map(_pss, alive) if v is not None)
            self._pss_cost, self._last_pss = time.thread_time() - start, now
            self.peak_pss = max(self.peak_pss, pss)
            self.pss_samples += 1
        self.cpu_s += time.thread_time() - cpu

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.sample()
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def peer_env(tmp: Path) -> dict:
    env = dict(os.environ, TMPDIR=str(tmp), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               PYTHONUNBUFFERED="1", RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0",
               RAY_DISABLE_DOCKER_CPU_WARNING="1", TQDM_DISABLE="1")
    env["PYTHONPATH"] = os.pathsep.join([str(PEERS_DIR), str(HERE)])
    for key in ("VIRTUAL_ENV", "PYTHONHOME"):
        env.pop(key, None)
    return env


def loopback_only(cmd: list[str]) -> list[str]:
    """`cmd` in a new network namespace whose only interface is loopback (so Ray binds to 127.0.0.1)."""
    return ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *cmd]


def check_namespace() -> None:
    probe = subprocess.run(loopback_only(["true"]), capture_output=True, text=True)
    if probe.returncode != 0:
        raise SystemExit("vs_peers.py runs every peer in a loopback-only network namespace (`unshare --net`, "
                         f"needs root), which failed here: {probe.stderr.strip()}")


def run_peer(name: str, model: str, inputs: Path, out: Path, tag: str, timeout: float) -> dict:
    peer = PEERS[name]
    python = venv_python(peer.venv)
    script = str(PEERS_DIR / peer.script)
    params_out = out / "params" / f"{tag}.npy"
    params_out.parent.mkdir(parents=True, exist_ok=True)
    args = [script, "--inputs", str(inputs), "--model", model, "--params-out", str(params_out), *peer.args]
    scratch = Path(f"/tmp/vsp-{os.getpid()}")  # the run's TMPDIR, removed after it; short for Ray's socket paths
    scratch.mkdir(exist_ok=True)
    if peer.venv == "flower":
        args += ["--ray-temp", str(scratch / "ray")]
    if peer.workers > 1:
        torchrun = str(Path(python).parent / "torchrun")
        cmd = [torchrun, "--standalone", "--nnodes=1", f"--nproc_per_node={peer.workers}", *args]
    else:
        cmd = [python, *args]
    log_path = out / "logs" / f"{tag}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0]
    with open(log_path, "w") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(loopback_only(cmd), stdout=log, stderr=subprocess.STDOUT, env=peer_env(scratch),
                                cwd=str(PEERS_DIR), start_new_session=True)
        monitor = TreeMonitor(proc.pid)
        monitor.sample()
        monitor.start()
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            rc = proc.wait()
        whole = time.perf_counter() - start
        monitor.stop()
    try:  # what the run left behind in its process group (a Ray daemon, say) ...
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    leftovers = [pid for pid in monitor.known if pid != proc.pid and _rss(pid) is not None]
    for pid in leftovers:  # ... or that left it
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    shutil.rmtree(scratch, ignore_errors=True)
    text = log_path.read_text(errors="replace")
    lines = [line for line in text.splitlines() if line.startswith(RESULT_PREFIX)]
    record = {"peer": name, "model": model, "tag": tag, "rc": rc, "whole_s": whole, "load_before": load,
              "peak_pss_mib": monitor.peak_pss / 2**20, "peak_rss_mib": monitor.peak_rss / 2**20,
              "peak_processes": monitor.peak_procs, "memory_samples": monitor.samples,
              "pss_samples": monitor.pss_samples, "monitor_cpu_s": monitor.cpu_s,
              "leftover_processes": len(leftovers), "log": str(log_path)}
    if rc != 0 or not lines:
        tail = "\n".join(text.splitlines()[-15:])
        record["error"] = f"exit {rc}" + ("" if lines else ", no result line") + f"; log {log_path}:\n{tail}"
        return record
    record.update({k: v for k, v in json.loads(lines[-1][len(RESULT_PREFIX):]).items() if k not in ("peer", "model")})
    record["params"] = str(params_out)
    return record


# --- report ----------------------------------------------------------------------------------------


def median(runs: list[dict], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def summarize(runs: list[dict], models: list[str], peers: list[str], rounds: int) -> dict:
    """Per model and peer: medians over repeats; then the ratios and the goals."""
    summary: dict = {}
    for model in models:
        rows = {}
        for name in peers:
            mine = [r for r in runs if r["model"] == model and r["peer"] == name and "error" not in r]
            if not mine:
                continue
            rows[name] = {key: median(mine, key) for key in
                          ("in_run_s", "whole_s", "peak_pss_mib", "peak_rss_mib", "accuracy", "max_abs_diff_vs_plain")}
            rows[name].update(runs=len(mine), framework=mine[-1].get("framework"),
                              peak_processes=max(r["peak_processes"] for r in mine))
        summary[model] = {"peers": rows, "ratios": ratios(rows), "goals": goals(model, rows) if rounds == 20 else []}
    return summary


def ratios(rows: dict) -> dict:
    ours = rows.get("fedstack")
    if not ours:
        return {}
    return {name: {"faster_in_run": row["in_run_s"] / ours["in_run_s"],
                   "faster_whole": row["whole_s"] / ours["whole_s"],
                   "memory_pss": row["peak_pss_mib"] / ours["peak_pss_mib"],
                   "accuracy_diff": ours["accuracy"] - row["accuracy"]}
            for name, row in rows.items() if name != "fedstack"}


def goals(model: str, rows: dict) -> list[dict]:
    """Each goal of the issue with what was measured and "met"/"missed" (None: no successful run of its peer)."""
    ours = rows.get("fedstack")
    if not ours:
        return []
    out = [{"goal": f"fedstack in-run ≤ {TIME_GOAL_S[model]:g} s", "measured": f"{ours['in_run_s']:.2f} s",
            "met": ours["in_run_s"] <= TIME_GOAL_S[model]}]
    for target, factor in SPEEDUP_GOALS[model].items():
        names = [n for n in rows if n.startswith(target)] if target == "flower" else [n for n in rows if n == target]
        if not names:
            out.append({"goal": f"≥ {factor:g}× faster than {target}", "measured": "no successful run", "met": None})
            continue
        best = min(names, key=lambda n: rows[n]["in_run_s"])  # against the peer at its fastest
        speedup = rows[best]["in_run_s"] / ours["in_run_s"]
        others = ", ".join(f"{n} {rows[n]['in_run_s'] / ours['in_run_s']:.2f}×" for n in names if n != best)
        out.append({"goal": f"≥ {factor:g}× faster than {target} (its fastest run: {best})",
                    "measured": f"{speedup:.2f}× ({rows[best]['in_run_s']:.2f} s)" + (f"; {others}" if others else ""),
                    "met": speedup >= factor})
    if "pfl2" in rows:
        out.append({"goal": "whole-tree memory (peak PSS) below pfl two-worker",
                    "measured": f"{ours['peak_pss_mib']:.0f} MiB vs {rows['pfl2']['peak_pss_mib']:.0f} MiB",
                    "met": ours["peak_pss_mib"] < rows["pfl2"]["peak_pss_mib"]})
    else:
        out.append({"goal": "whole-tree memory (peak PSS) below pfl two-worker", "measured": "no successful run",
                    "met": None})
    diffs = {n: abs(ours["accuracy"] - r["accuracy"]) for n, r in rows.items() if n != "fedstack"}
    if diffs:
        worst = max(diffs, key=diffs.get)
        out.append({"goal": f"accuracy within noise (|Δ| ≤ {ACCURACY_NOISE:g} against every peer)",
                    "measured": f"largest |Δ| {diffs[worst]:.4f} ({worst})", "met": diffs[worst] <= ACCURACY_NOISE})
    return out


def print_model(model: str, part: dict, rounds: int) -> None:
    rows = part["peers"]
    print(f"\n{MODEL_NAMES[model]} ({model}), {rounds} rounds, one torch thread per process, "
          f"{os.cpu_count()} cores; medians over repeats")
    print(f"{'peer':9s} {'framework':16s} {'in-run s':>9s} {'whole s':>8s} {'PSS MiB':>8s} {'RSS MiB':>8s} "
          f"{'procs':>5s} {'accuracy':>8s} {'max|Δθ| vs plain':>16s}")
    for name, row in rows.items():
        diff = row["max_abs_diff_vs_plain"]
        print(f"{name:9s} {row['framework'] or '':16s} {row['in_run_s']:9.2f} {row['whole_s']:8.2f} "
              f"{row['peak_pss_mib']:8.0f} {row['peak_rss_mib']:8.0f} {row['peak_processes']:5d} "
              f"{row['accuracy']:8.4f} {'' if diff is None else f'{diff:16.3g}'}")
    if part["ratios"]:
        print("fedstack against each peer (in-run speed-up; whole-process speed-up; the peer's memory / fedstack's):")
        for name, r in part["ratios"].items():
            print(f"  {name:9s} {r['faster_in_run']:6.2f}× faster in-run, {r['faster_whole']:5.2f}× whole process, "
                  f"memory {r['memory_pss']:5.2f}×, accuracy {r['accuracy_diff']:+.4f}")
    print("goals:" if rounds == 20 else "goals: (set for 20 rounds, not judged)")
    for g in part["goals"]:
        verdict = "not measured" if g["met"] is None else "met" if g["met"] else "MISSED"
        print(f"  [{verdict}] {g['goal']}: {g['measured']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mlp,cnn", help="comma-separated: mlp (2NN), cnn")
    parser.add_argument("--peers", default=",".join(ALL_PEERS), help="comma-separated, of " + ",".join(ALL_PEERS))
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", default=str(HERE / "runs" / "vs-peers"))
    parser.add_argument("--timeout", type=float, default=1800, help="seconds one run may take")
    args = parser.parse_args()
    from common import name_list  # common imports fedstack (and torch): only once the arguments are good

    models = name_list(parser, "--models", args.models, MODEL_NAMES)
    peers = name_list(parser, "--peers", args.peers, ALL_PEERS)
    out = Path(args.out).resolve()
    inputs = out / "inputs"
    check_namespace()
    for name in dict.fromkeys(PEERS[p].venv for p in peers):
        venv_python(name)
    workloads = {}
    for model in models:
        meta = workloads[model] = write_inputs(inputs, model, args.rounds)
        print(f"inputs for {model}: {meta['num_params']} parameters, {meta['rounds']} rounds × "
              f"{meta['clients_per_round']} clients, in {inputs}", flush=True)
    runs: list[dict] = []
    for rep in range(1, args.repeats + 1):
        for model in models:
            for name in peers:
                tag = f"{model}-{name}-{rep}"
                record = run_peer(name, model, inputs, out, tag, args.timeout)
                record["repeat"] = rep
                runs.append(record)
                if "error" in record:
                    print(f"[{rep}] {model} {name:9s} FAILED: {record['error']}", flush=True)
                else:
                    print(f"[{rep}] {model} {name:9s} in-run {record['in_run_s']:7.2f} s"
                          f"  whole {record['whole_s']:7.2f} s"
                          f"  peak PSS {record['peak_pss_mib']:6.0f} MiB (RSS {record['peak_rss_mib']:6.0f})"
                          f"  accuracy {record['accuracy']:.4f}  (load before {record['load_before']:.2f})", flush=True)
            plain = next((r for r in runs if r["model"] == model and r["peer"] == "plain" and r["repeat"] == rep
                          and "params" in r), None)
            for r in runs:
                if r["model"] == model and r["repeat"] == rep and "params" in r and plain is not None:
                    r["max_abs_diff_vs_plain"] = float(np.abs(np.load(r["params"]) - np.load(plain["params"])).max())
    summary = summarize(runs, models, peers, args.rounds)
    for model in models:
        print_model(model, summary[model], args.rounds)
    shutil.rmtree(out / "params", ignore_errors=True)
    results = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "rounds": args.rounds,
               "repeats": args.repeats, "cores": os.cpu_count(), "machine": platform.platform(),
               "python": platform.python_version(), "torch_threads_per_process": 1, "workloads": workloads,
               "runs": runs, "summary": summary}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(f"\nresults: {out / 'results.json'}")


if __name__ == "__main__":
    main()
