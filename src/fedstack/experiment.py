"""Assembles a simulation from Python objects (`simulate`) or from a Config (`run_config`)."""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np

from .client import FitConfig, Trainer, capabilities
from .codec import Pipeline, build_pipeline
from .attack import build_attack
from .config import Config, private, robust_rule, to_toml
from .data.csr import Partition
from .engine import Engine, Workload, make_engine
from .errors import ConfigError, FedstackError
from .files import write_atomic
from .plan import (check_parts, client_side, coded_server, codec_options, dataset_of, evaluation_of,
                   local_only_of, personalization_of, rules_of, schedule_of, trackers_of, contribution_of)
from .records import History, prepare_run_dir, summarize
from .report import ContributionLedger, MetricsWriter, write_report, write_summary
from .sampling import build_sampler, overselected
from .seeding import rng
from .loop import Evaluation, Parts, Rules, schedule_for
from .loop.evaluate import own_params
from .store import RunStore
from .strategy import FedAvg, Strategy, build_strategy, restore_strategy_state, strategy_state
from .dp.accounting import RecordLevelLedger
from .profiling import Profile
from .dp.central import AdaptiveClipping, CentralDP
from .strategy.robust import RootUpdate
from .systems import build_system


log = logging.getLogger("fedstack.run")


def simulate(trainer_factory: Callable[[], Trainer], dataset, initial_params: np.ndarray, *,
             strategy: Strategy | None = None, rounds: int = 10, clients_per_round: int = 10,
             engine: str | Engine = "local", seed: int = 0, out: str | Path | None = None,
             parts: Parts | None = None, rules: Rules | None = None, evaluation: Evaluation | None = None) -> History:
    """Run a federated simulation; with `out`, also write metrics, summary, report and store there.

    When `out` already holds the store of a run with the same config, the run resumes after
    its last finished round; with the same seed it ends with the same bits as an unbroken run.

    `engine` is "local", "pool", "ray" or an Engine object (`fedstack.engine.make_engine("pool", workers=2)`);
    `trainer_factory` must be picklable (a module-level function or a functools.partial) for "pool" and
    "ray": each worker process calls it once. Client state (SCAFFOLD's control variates) lives in the
    store with `out`, in memory without.

    The typed options say the rest (fedstack.options): `parts` — codecs, sampler, simulated fleet,
    attack, DP-SGD ledger, callbacks, profiling; `rules` — how rounds are shaped on the simulated clock
    (deadlines, over-selection, retries; an asynchronous strategy's concurrency and buffer) and guarded
    (norm bound, privacy budget); `evaluation` — central and federated evaluation, fine-tuning.
    """
    strategy = strategy or FedAvg()
    parts, rules, evaluation = parts or Parts(), rules or Rules(), evaluation or Evaluation()
    check_arguments(trainer_factory, dataset, initial_params, strategy, rounds, clients_per_round)
    workload = Workload(trainer_factory, dataset, parts.pipeline or Pipeline(), seed)
    history = History(trainer_factory=trainer_factory)
    store, (start_round, sim_time, params) = None, (1, 0.0, initial_params)
    callbacks: list[Callable] = [history, *parts.callbacks]
    if out is not None:
        store, (start_round, sim_time, params) = _open_store(out, history, strategy, parts, initial_params, dataset,
                                                            seed)
        callbacks = [lambda record, params: store.finish_round(record["round"], record, params,
                                                               run_state(strategy, parts)),
                     MetricsWriter(history.run_dir, history.rounds), *callbacks]
        if parts.contribution is not None:
            callbacks.append(ContributionLedger(history.run_dir, history.rounds, parts.contribution.payout))
    engine = engine if not isinstance(engine, str) else make_engine(engine)
    loop = schedule_for(strategy)(strategy, engine, workload, rounds=rounds, clients_per_round=clients_per_round,
                                  rules=rules, evaluation=evaluation, parts=replace(parts, callbacks=callbacks),
                                  client_states=store, profile=Profile() if parts.profile else None)
    try:
        history.params = loop.run(params, start_round, sim_time)
        _keep_own_models(history, loop, dataset, trainer_factory, deployed=engine.exchanges)
        if loop.stopped:
            history.status, history.stopped = "stopped", loop.stopped
        elif history.rounds and not any(r.get("clients", 0) >= max(rules.min_clients, 1) for r in history.rounds):
            history.status = "degraded"  # no round aggregated an update: the model is the one it started from
            log.warning("no round aggregated an update (every client failed or was refused): status degraded")
    except BaseException as exc:
        history.status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        raise
    finally:
        if loop.profile is not None:
            history.profile = loop.profile.summary()
        if store is not None:
            _close_store(store, history, seed, parts.config, deployed=engine.exchanges)
            for callback in loop.callbacks:  # trackers keep summary.json and report.png too
                callback.on_results(history.run_dir)
    return history


def _keep_own_models(history: History, loop, dataset, trainer_factory, deployed: bool) -> None:
    """Under personalised or clustered training, each client's own model and cluster into the History (a
    simulation's: deployed, the personal parts never left the devices)."""
    clusters = history.rounds[-1].get("clusters") if history.rounds else None
    history.clusters = {i: int(c) for i, c in enumerate(clusters or []) if c >= 0}
    own = loop.evaluator.own
    if own is not None and not deployed and history.params is not None:
        history.personal = own_params(own, history.params, dataset, trainer_factory())


def _open_store(out, history: History, strategy: Strategy, parts: Parts, initial_params: np.ndarray, dataset,
                seed: int) -> tuple[RunStore, tuple[int, float, np.ndarray]]:
    """The run directory's store, and where the run starts: (round, simulated time, params) — after the last
    finished round of the same run (resume), or from the beginning. Another run's directory is refused."""
    run_dir = history.run_dir = prepare_run_dir(out)
    store = RunStore(run_dir / "store.sqlite")
    checkpoint = store.checkpoint()
    identity = fingerprint(initial_params, dataset, strategy, seed, parts.config or {}, parts.transforms)
    start = (1, 0.0, initial_params)
    if checkpoint is not None:  # resume after the last finished round
        difference = fingerprint_difference(store.meta("fingerprint") or {"config": store.meta("config")}, identity)
        if difference is not None:
            store.close()
            raise FedstackError(f"--out {run_dir} holds another run: {difference}; choose another directory")
        (last, params), history.rounds = checkpoint, store.rounds()
        start = (last + 1, history.rounds[-1]["sim_time_s"], params)
        restore_run_state(strategy, parts, store.strategy_state())
        store.rewind_client_states(last)
        log.warning("resuming %s from round %d", run_dir, last + 1)
    store.set_meta("config", parts.config or {})
    store.set_meta("fingerprint", identity)
    return store, start


def _close_store(store: RunStore, history: History, seed: int, config: dict | None, deployed: bool) -> None:
    """Record the run's status, close the store, write summary.json and report.png (an engine that reaches
    real devices ran a deployment: no simulated clock to report)."""
    store.set_meta("status", history.status)
    store.close()
    write_summary(history.run_dir, summarize(history, seed, config or {}, deployed=deployed))
    if history.rounds:
        write_report(history.run_dir)


def check_arguments(trainer_factory, dataset, initial_params, strategy, rounds: int, clients_per_round: int) -> None:
    """`simulate`'s arguments checked as the CLI checks a config, before any work: one line naming the
    argument at fault (FedstackError), never a traceback rounds later."""
    for name, value in (("rounds", rounds), ("clients_per_round", clients_per_round)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise FedstackError(f"{name} must be an integer >= 1, got {value!r}")
    if clients_per_round > dataset.num_clients:
        raise FedstackError(f"clients_per_round={clients_per_round} > num_clients={dataset.num_clients}")
    if not isinstance(strategy, Strategy):  # it declares configure and aggregate
        raise FedstackError(f"strategy must be a strategy object such as fedstack.FedAvg(), got {strategy!r} "
                            f"({type(strategy).__name__}); by name, strategies are a config's server.strategy")
    params = np.asarray(initial_params)
    if params.ndim != 1 or not np.issubdtype(params.dtype, np.floating):
        raise FedstackError(f"initial_params must be a flat float vector, got shape {params.shape} of {params.dtype}")
    trainer = trainer_factory()  # one, built here: a mismatch fails now, not in every task of every round
    missing = strategy.client_needs() - capabilities(trainer)
    if missing:
        raise FedstackError(f"{type(strategy).__name__} needs a trainer that applies {', '.join(sorted(missing))} "
                            f"(fedstack.local_terms); {type(trainer).__name__} does not declare it in "
                            "Trainer.capabilities, so its clients would train without it")
    model = trainer.get_params() if isinstance(trainer, Trainer) else None
    if model is None:  # a trainer that does not expose its parameters: its first fit will say
        return
    expected = model.size * strategy.models  # clustered training stacks k models
    if params.size != expected:
        raise FedstackError(f"initial_params holds {params.size} values, but the trainer's model has {model.size}"
                            + (f" and {type(strategy).__name__} stacks {strategy.models} models" if
                               strategy.models > 1 else "") + " (e.g. trainer_factory().get_params())")


# Config keys that change no result: a run directory resumes whatever they say (tracking can be turned on later).
RESULT_FREE = ("tracking.",)


def fingerprint(params: np.ndarray, dataset, strategy, seed: int, config: dict, transforms=()) -> dict:
    """What decides a run's result, item by item: a run directory holding a run whose fingerprint differs
    is refused (`fingerprint_difference` names the item), never silently resumed or returned."""
    return {
        "model": f"{params.size} parameters, initial values sha256 {_digest(np.ascontiguousarray(params))}",
        "data": f"{len(dataset.y)} examples of shape {tuple(dataset.x.shape[1:])}, {len(dataset.y_test)} test "
                f"examples, {dataset.num_clients} clients, partition sha256 {_partition_digest(dataset.train_idx)}",
        "strategy": " + ".join(describe(part) for part in (strategy, *transforms)),
        "seed": int(seed),
        "config": config,
    }


def fingerprint_difference(stored: dict, now: dict) -> str | None:
    """The first item in which two fingerprints differ, said in words: a config key first (what a user
    changes), then the model, the data, the strategy or the seed (what the Python API passes)."""
    before, after = _dotted(stored.get("config") or {}), _dotted(now["config"])
    for key in sorted(set(before) | set(after)):
        if key.startswith(RESULT_FREE):
            continue
        if before.get(key, "(unset)") != after.get(key, "(unset)"):
            was, is_ = before.get(key, "(unset)"), after.get(key, "(unset)")
            return f"its config key '{key}' was {was!r}, this one's is {is_!r}"
    for item in ("model", "data", "strategy", "seed"):
        if item in stored and stored[item] != now[item]:
            return f"its {item} was {stored[item]}, this one's is {now[item]}"
    return None


def describe(part, depth: int = 0) -> str:
    """A run part (a strategy and what it holds) by its class and settings: numbers, flags and names, and
    the fedstack parts inside it; arrays (state, which a checkpoint restores) are left out."""
    try:
        settings = sorted(vars(part).items())
    except TypeError:  # no attributes of its own
        settings = []
    fields = []
    for name, value in settings:
        if isinstance(value, (bool, int, float, str)) and not name.startswith("_"):
            fields.append(f"{name}={value!r}")
        elif depth < 3 and type(value).__module__.startswith("fedstack."):
            fields.append(f"{name}={describe(value, depth + 1)}")
    return f"{type(part).__name__}({', '.join(fields)})"


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(array.tobytes()).hexdigest()[:16]


def _partition_digest(parts) -> str:
    if isinstance(parts, Partition):
        arrays = np.asarray(parts.offsets).tobytes() + np.asarray(parts.indices).tobytes()
        return hashlib.sha256(arrays).hexdigest()[:16]
    h = hashlib.sha256()
    for part in parts:
        h.update(np.asarray(part, np.int64).tobytes() + b"|")
    return h.hexdigest()[:16]


def _dotted(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_dotted(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def run_state(strategy, parts: Parts) -> dict[str, np.ndarray]:
    """What a checkpoint keeps besides the params: the strategy's state, each transform's ("transform<i>.*"),
    the sampler's ("sampler.*") and the DP-SGD clients' privacy ledger ("ledger.*")."""
    state = strategy_state(strategy)
    for prefix, part in _stateful_parts(parts):  # each declares state (no-op by default)
        state.update({f"{prefix}.{key}": value for key, value in part.state().items()})
    return state


def restore_run_state(strategy, parts: Parts, state: dict[str, np.ndarray]) -> None:
    """Give the strategy and the parts back what `run_state` saved."""
    named = dict(_stateful_parts(parts))
    restore_strategy_state(strategy, {k: v for k, v in state.items() if k.split(".")[0] not in named})
    for prefix, part in named.items():
        part.load_state({k[len(prefix) + 1:]: v for k, v in state.items() if k.startswith(prefix + ".")})


def _stateful_parts(parts: Parts) -> list[tuple[str, object]]:
    named = [(f"transform{i}", t) for i, t in enumerate(parts.transforms)]
    named += [("sampler", parts.sampler), ("ledger", parts.record_ledger)]
    return [(prefix, part) for prefix, part in named if part is not None]


def run_config(config: Config, out: str | Path | None = None, on_round: list[Callable] = (),
               engine: str | Engine | None = None, sampler=None, dataset=None, profile: bool = False) -> History:
    """Run the experiment a Config describes, writing everything to `out` (default runs/<timestamp>);
    with `profile`, also where the time went.

    A deployment passes its own `engine` (remote clients) and `sampler` (among connected clients).
    """
    check_parts(config)  # a Config made without fedstack.plan.load_config is checked here, before any work
    if config.decentralized.topology:  # no server: nodes gossip with their neighbours
        from .decentralized import run_decentralized

        return run_decentralized(config, out, on_round, dataset, engine)
    dataset = dataset if dataset is not None else dataset_of(config)
    options = codec_options(config)
    pipeline = build_pipeline(config.codec.pipeline, options)
    download = build_pipeline(config.codec.download, options, key="codec.download")
    remote = engine is not None and not isinstance(engine, str)
    if remote and download.stages:
        raise ConfigError("codec.download", "the gRPC transport sends the global model as float32; "
                          "download codecs are simulation-only for now")
    if remote:
        _refuse_simulated_fleet(config)
        # Deployed clients (an engine that exchanges protocol messages) encrypt under the public key of
        # codec.ckks_keys; without it the server would make the key pair, and so hold the secret key.
        if "ckks" in config.codec.pipeline and engine.exchanges and not config.codec.ckks_keys:
            raise ConfigError("codec.ckks_keys", "homomorphic aggregation with deployed clients needs a key pair "
                              "from `fedstack keys DIR`: the server reads DIR/ckks_public.bin only, and one client, "
                              "started with --ckks-secret DIR/ckks_secret.bin, decrypts the aggregate")
    secret = Path(config.codec.ckks_keys) / "ckks_secret.bin"
    if not remote and "ckks" in config.codec.pipeline and config.codec.ckks_keys and not secret.is_file():
        raise ConfigError("codec.ckks_keys", f"a simulation plays the key holder too and needs {secret}")
    system = build_system(config.systems, dataset.num_clients, config.seed)  # a bad trace fails here
    if sampler is None:
        sampler = build_sampler(config.server.sampler, dataset.num_clients, system, config.seed)
    run_dir = prepare_run_dir(out)  # the first thing a run leaves behind: after every check of the config
    trackers = trackers_of(config, run_dir)  # each in a process of its own, setting up while the run does
    try:
        return _run_central(config, run_dir, [*on_round, *trackers], engine, sampler, dataset, system, pipeline,
                            download, remote, profile)
    finally:
        for tracker in trackers:  # after the run they are closed already; after an error, now
            tracker.close()


def _run_central(config: Config, run_dir: Path, on_round: list, engine, sampler, dataset, system, pipeline,
                 download, remote: bool, profile: bool) -> History:
    """The rest of `run_config` for a server's run, into `run_dir`, once the config's parts passed their checks."""
    factory, params, fit, finetune = client_side(config, dataset)
    root = root_update(config, dataset, factory, fit) if robust_rule(config.server) == "fltrust" else None
    model = factory()
    rules = rules_of(config)
    if config.server.strategy == "coded":  # its load allocation reads the fleet and sets the deadline
        # (deployed, the fleet is the uniform profile: devices are taken as alike, and --deadline is the wait)
        strategy = coded_server(config, dataset, system, fit, model.get_params().size)
        rules = replace(rules, deadline_s=strategy.allocation.deadline)
    else:
        strategy = build_strategy(config.server, fit, dataset.num_clients, root=root,
                                  personal=personalization_of(config, model), groups=dataset.groups,
                                  clustering=config.personal, model_size=model.get_params().size)
    if strategy.needs_each_update and private(config):  # DP's server step and secure sums leave one sum
        raise ConfigError("server.strategy", f"{config.server.strategy} reads each client's update; differential "
                          "privacy and secure aggregation give the server only their (noised) sum")
    write_atomic(run_dir / "config.toml", to_toml(config).encode())
    engine = engine or make_engine(config.engine.name, config.engine.workers, config.engine.address)
    return simulate(factory, dataset, params, strategy=strategy, rounds=config.server.rounds,
                    clients_per_round=config.server.clients_per_round, engine=engine, seed=config.seed, out=run_dir,
                    parts=Parts(pipeline=pipeline, download=download, sampler=sampler, system=system,
                                transforms=transforms_of(config, dataset.num_clients, remote),
                                attack=build_attack(config.attack, dataset.num_clients, dataset.num_classes,
                                                    config.seed, config.server.clients_per_round),
                                record_ledger=RecordLevelLedger(dataset.num_clients, delta=config.privacy.delta)
                                if config.client.dp_sgd else None,
                                callbacks=list(on_round), profile=profile, config=config.model_dump(),
                                contribution=contribution_of(config, dataset)),
                    rules=rules,
                    evaluation=replace(evaluation_of(config, finetune), local_only=local_only_of(config, fit),
                                       local_start=params[:model.get_params().size]))  # IFCA stacks k models


def transforms_of(config: Config, num_clients: int, remote: bool = False) -> list:
    """The round transforms a config asks for: its per-round client configuration, then central DP's server
    half (a deployed server's noise from the operating system)."""
    schedule = schedule_of(config)
    transforms = [schedule] if schedule is not None else []
    if private(config):
        transforms.append(central_dp(config, num_clients, seeded_noise=not remote))
    return transforms


def root_update(config: Config, dataset, factory, fit: FitConfig) -> RootUpdate:
    """FLTrust's server update on `server.root_examples` training examples drawn with the run seed.

    Cao et al.'s server collects a small clean dataset of its own; a simulation takes it from the
    training pool (so it may overlap clients' data). The server takes as many local steps as the
    median client does under `fit`.
    """
    from .data.dataset import ClientData

    k = config.server.root_examples
    pool = len(dataset.y)
    if k > pool:
        raise ConfigError("server.root_examples", f"{k} root examples, but the training data holds {pool}")
    idx = np.sort(rng(config.seed, "root").choice(pool, size=k, replace=False))
    typical = int(np.median(dataset.train_idx.sizes()))
    steps = fit.local_steps or fit.epochs * max(1, math.ceil(typical / fit.batch_size))
    data = ClientData(dataset.x, dataset.y, idx, np.zeros(0, dtype=np.int64))
    return RootUpdate(factory, data, fit, steps, config.seed)


def central_dp(config: Config, num_clients: int, seeded_noise: bool = True) -> CentralDP:
    """DP-FedAvg's server half as `[privacy]` says; a deployed server (`seeded_noise=False`) draws its noise
    from the operating system."""
    p = config.privacy
    return CentralDP(clip_norm=p.clip_norm, noise_multiplier=p.noise_multiplier, mode=p.mode,
                   clients_per_round=overselected(config.server.clients_per_round, config.server.overselect),
                   population=num_clients, seed=config.seed, delta=p.delta, accountant=p.accountant,
                   sampling="poisson" if config.server.sampler == "poisson" else "fixed",
                   adaptive=AdaptiveClipping(p.target_quantile, p.clip_lr, p.clip_count_stddev),
                   seeded_noise=seeded_noise)


def _refuse_simulated_fleet(config: Config) -> None:
    """Real devices bring their own speed, availability and failures: the simulated ones cannot apply."""
    s, server = config.systems, config.server
    for key, simulated in (("systems.profile", s.profile != "uniform"), ("systems.dropout", s.dropout > 0),
                           ("server.deadline_s", server.deadline_s > 0), ("server.overselect", server.overselect > 0),
                           ("server.sampler", server.sampler != "uniform"),
                           ("server.strategy", server.strategy in ("fedbuff", "fedasync"))):
        if simulated:
            raise ConfigError(key, "simulated device fleets and their deadlines are simulation-only; a deployed "
                              "server samples among connected clients and waits --deadline for each")
    if config.attack.name:
        raise ConfigError("attack.name", "attacks are simulated; a deployed server's clients are whoever connects")
