"""Plan: a config read into the parts a run is built from — the data set, the model's trainer factory,
the initial model, the clients' local work, the codec options — and checked as a whole. What a
simulation, a deployed server and a deployed device all build the same way (none of them imports the
others for it). `fedstack.config` checks keys and values and imports no part; `check_parts` checks what
only the built parts can say (a pipeline's names, parameters and order), and `load_config` does both."""

from __future__ import annotations

import functools
import importlib
import math
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np

from . import config as keys
from .client import FitConfig, Trainer
from .codec import CodecOptions, build_pipeline
from .config import Config
from .errors import ConfigError
from .options import Evaluation, Rules
from .seeding import int_seed


def load_config(path: str | Path | None = None, overrides: list[str] | tuple = ()) -> Config:
    """The config of an optional TOML file plus `--set` overrides, checked before any work: its keys and
    values (`fedstack.config.load_config`) and the parts they name (`check_parts`)."""
    config = keys.load_config(path, overrides)
    check_parts(config)
    return config


def check_parts(config: Config) -> None:
    """What only the parts can check: each codec pipeline builds (known names, valid parameters, an order
    its stages' declared traits allow), and the download pipeline keeps no client state."""
    rules_of(config)  # the round rules check themselves (fedstack.options.Rules)
    options = codec_options(config)
    build_pipeline(config.codec.pipeline, options)  # unknown names, bad parameters, impossible orders
    download = build_pipeline(config.codec.download, options, key="codec.download")
    if download.stateful:
        raise ConfigError("codec.download", "error-feedback codecs (topk, sign) compress uploads only: the "
                          "server keeps no residual for the global model")


def rules_of(config: Config) -> Rules:
    """The round rules a config's [server] section (and client.partial_work, privacy.epsilon_budget) sets."""
    s = config.server
    return Rules(min_clients=s.min_clients, round_retries=s.round_retries, deadline_s=s.deadline_s,
                 overselect=s.overselect, partial_work=config.client.partial_work, concurrency=s.concurrency,
                 buffer_size=s.buffer_size, max_norm_ratio=s.max_norm_ratio,
                 epsilon_budget=config.privacy.epsilon_budget)


def load_reference(name: str, key: str, where: str = "") -> Callable:
    """The function a config names as "package.module:function", imported from the directory `where` (by
    default the working directory) or an installed package; a ConfigError naming `key` if it cannot be."""
    module_name, _, attribute = name.partition(":")
    where = where or os.getcwd()
    if where not in sys.path:  # `fedstack run` started where the user's package is
        sys.path.insert(0, where)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # a missing module, or one that fails on import: the user's to fix
        raise ConfigError(key, f"cannot import {module_name!r} ({type(exc).__name__}: {exc}); run from the "
                          "directory that holds it, or install it") from None
    function = vars(module).get(attribute)
    if not callable(function):
        raise ConfigError(key, f"{module_name!r} has no function {attribute!r}")
    return function


def evaluation_of(config: Config, finetune: FitConfig | None) -> Evaluation:
    """What a config's `[eval]` measures and when."""
    e = config.eval
    finish = load_reference(e.metrics_aggregation, "eval.metrics_aggregation") if e.metrics_aggregation else None
    fit = load_reference(e.fit_metrics_aggregation, "eval.fit_metrics_aggregation") \
        if e.fit_metrics_aggregation else None
    return Evaluation(every=e.every, federated=e.federated, federated_every=e.federated_every,
                      finetune=finetune, finish_metrics=finish, fit_metrics_aggregation=fit)


def local_only_of(config: Config, fit: FitConfig) -> FitConfig | None:
    """The local-only baseline's training (`eval.local_only`): the run's local work, for the epochs (or steps)
    a client's expected share of the run comes to unless `eval.local_only_epochs` says."""
    if not config.eval.local_only:
        return None
    share = -(-config.server.rounds * config.server.clients_per_round // config.data.num_clients)
    epochs = config.eval.local_only_epochs or share * fit.epochs
    steps = 0 if config.eval.local_only_epochs else share * fit.local_steps  # local_steps wins where set
    return replace(fit, epochs=epochs, local_steps=steps, mu=0.0, scaffold=False, dp_sgd=False, personal=None)


def schedule_of(config: Config):
    """The per-round client configuration `[client]` asks for (fedstack.schedules.ClientSchedule), or None."""
    from .schedules import ClientSchedule

    c = config.client
    if c.lr_schedule == "constant" and not c.epochs_by_round:
        return None
    return ClientSchedule(c.lr_schedule, c.lr_decay, c.lr_step_rounds, c.lr_min, config.server.rounds,
                          tuple(tuple(pair) for pair in c.epochs_by_round))


def trainer_factory(config: Config, input_shape: tuple[int, ...], num_classes: int) -> Callable[[], Trainer]:
    """The config's trainer factory, picklable (each worker, each device builds its own trainer)."""
    m = config.model
    if m.name == "rff":  # linear regression on random Fourier features (fedstack.coded), seeded by the run
        c = config.coded
        from .coded import map_seed_of

        return functools.partial(make_rff_trainer, int(np.prod(input_shape)), c.features, c.gamma,
                                 map_seed_of(c.map_seed, config.seed), num_classes)
    # The directory the run starts in goes with the factory: a Ray worker starts elsewhere, and must import
    # the user's package from the same place (on a cluster of several machines, install the package instead).
    return functools.partial(make_trainer, m.name, tuple(input_shape), num_classes, config.client.optimizer, m.task,
                             m.metrics, os.getcwd() if keys.is_reference(m.name) or m.metrics else "")


def make_rff_trainer(inputs: int, features: int, gamma: float, map_seed: int, classes: int,
                     seeded_parity: bool = True):
    """fedstack.coded's RffTrainer with the run's shared feature map (picklable through functools.partial)."""
    from .coded import FourierFeatures, RffTrainer

    return RffTrainer(FourierFeatures.drawn(inputs, features, gamma, map_seed), classes, seeded_parity)


def coded_server(config: Config, dataset, system, fit: FitConfig, model_size: int):
    """CodedFedL's server half: the load allocation from the fleet (each client's speed, and its download and
    upload of the model) and the parity rows `coded.redundancy` asks for."""
    from .coded import CodedServer, allocate, choose_rows

    sizes = [len(dataset.client(i).train_idx) for i in range(dataset.num_clients)]
    devices = [system.device(i) for i in range(dataset.num_clients)]
    nbytes = 4 * model_size
    per_point = [d.task_seconds(1, 0, 0) for d in devices]
    fixed = [d.task_seconds(0, nbytes, nbytes) for d in devices]
    stays = [1.0 - config.systems.dropout] * dataset.num_clients
    if config.coded.redundancy == "auto":  # one parity row: q + c float32 values, uploaded by every client
        row_bytes = 4 * (model_size // dataset.num_classes + dataset.num_classes)
        rows, allocation, _ = choose_rows(sizes, per_point, fixed, stays,
                                          [d.task_seconds(0, 0, row_bytes) for d in devices],
                                          config.coded.server_speed, config.server.rounds)
    else:
        rows = int(round(config.coded.redundancy * sum(sizes)))
        allocation = allocate(sizes, per_point, fixed, stays, rows)
    return CodedServer(allocation, dataset.num_classes, sum(sizes), rows=rows, lr=fit.lr,
                       noise=config.coded.parity_noise, server_speed=config.coded.server_speed)


def make_trainer(model: str, input_shape: tuple[int, ...], num_classes: int, optimizer: str,
                 task: str = "classification", metrics: str = "", where: str = ""):
    """A TorchTrainer for a named model, or the user's own model ("package.module:function" returning a
    torch.nn.Module, or a fedstack.Trainer) for `task`, with the user's `metrics` function if named;
    picklable through functools.partial, so each worker builds one."""
    from .client import TorchTrainer
    from .models import build_model

    own_metrics = load_reference(metrics, "model.metrics", where) if metrics else None
    if not keys.is_reference(model):
        return TorchTrainer(build_model(model, input_shape, num_classes), optimizer=optimizer, jit_eval=True,
                            metrics=own_metrics)
    built = load_reference(model, "model.name", where)()
    if isinstance(built, Trainer):
        if own_metrics is not None:  # said rather than ignored
            raise ConfigError("model.metrics", f"{model} returned a fedstack.Trainer, which reports its own "
                              "metrics from evaluate(); model.metrics applies to torch.nn.Module models")
        return built
    torch = sys.modules.get("torch")  # a torch module was built with torch imported: no import here otherwise
    if torch is None or not isinstance(built, torch.nn.Module):
        raise ConfigError("model.name", f"{model} returned {type(built).__name__}: expected a torch.nn.Module or a "
                          "fedstack.Trainer")
    return TorchTrainer(built, optimizer=optimizer, task=task, metrics=own_metrics)


def personalization_of(config: Config, trainer):
    """The client half of the personalised algorithm `server.strategy` names (fedstack.personal), for the
    model `trainer` trains, or None for any other strategy."""
    from .client import TorchTrainer
    from .personal import APFL, Ditto, FedRep, Personalization, Split, batchnorm_split, everything, head_split

    name, p = config.server.strategy, config.personal
    if name not in ("ditto", "apfl", "fedper", "fedrep", "fedbn", "local_only", "ifca"):
        return None
    size = trainer.get_params().size
    if name == "ifca":
        from .clustered import ifca

        return ifca(p.clusters, size)
    if name == "ditto":
        return Ditto(Split(size), lam=p.lam)
    if name == "apfl":
        return APFL(Split(size), alpha=p.alpha)
    if name in ("fedper", "fedrep", "fedbn") and not isinstance(trainer, TorchTrainer):
        raise ConfigError("server.strategy", f"{name} splits the model by its layers' names, which only a "
                          f"torch.nn.Module model has (this one is a {type(trainer).__name__})")
    try:
        if name == "fedbn":
            return Personalization(batchnorm_split(trainer.spec))
        if name == "local_only":
            return Personalization(everything(trainer.spec) if isinstance(trainer, TorchTrainer)
                                   else Split(size, ((0, size),)))
        split = head_split(trainer.spec, p.head_layers)
    except ValueError as exc:
        raise ConfigError("personal.head_layers" if name != "fedbn" else "server.strategy", str(exc)) from None
    return FedRep(split, head_epochs=p.head_epochs) if name == "fedrep" else Personalization(split)


def initial_params(trainer_factory: Callable[[], Trainer], seed: int) -> np.ndarray:
    """The starting global model: the factory's model initialised from the run seed (torch's generator, where
    torch is installed; a model that is not a torch one — a NumPy Trainer — starts where its get_params says)."""
    try:
        import torch
    except ImportError:  # fedstack without the torch extra: no torch model to seed (make_trainer says so)
        return trainer_factory().get_params()
    torch.manual_seed(int_seed(seed, "init"))
    return trainer_factory().get_params()


def dataset_of(config: Config):
    """The FederatedDataset a Config names: a built-in one, or what the user's loader returns — a
    FederatedDataset as it is, or (x, y, x_test, y_test) arrays partitioned as `[data]` says."""
    from .data import FederatedDataset, build_dataset

    d = config.data
    if keys.is_reference(d.name):
        loaded = load_reference(d.name, "data.name")()
        if isinstance(loaded, FederatedDataset):
            return loaded
        if not (isinstance(loaded, tuple) and len(loaded) == 4):
            raise ConfigError("data.name", f"{d.name} returned {type(loaded).__name__}: expected a FederatedDataset "
                              "or a tuple (x, y, x_test, y_test)")
        return FederatedDataset.from_arrays(*loaded, num_clients=d.num_clients, partition=d.partition, alpha=d.alpha,
                                            holdout=d.holdout, seed=config.seed, name=d.name,
                                            targets="values" if config.model.task == "regression" else "classes",
                                            clusters=d.clusters, cluster_transform=d.cluster_transform)
    return build_dataset(d.name, num_clients=d.num_clients, partition=d.partition, alpha=d.alpha,
                         beta=d.beta, seed=config.seed, path=d.path, holdout=d.holdout, level=d.level,
                         vocab_size=d.vocab_size, clusters=d.clusters, cluster_transform=d.cluster_transform)


def client_side(config: Config, dataset):
    """What clients run under a Config: (trainer factory, initial params, local work, fine-tuning or None)."""
    factory = trainer_factory(config, tuple(dataset.x.shape[1:]), dataset.num_classes)
    c = config.client
    fit = FitConfig(epochs=c.epochs, local_steps=c.local_steps, batch_size=c.batch_size, lr=c.lr, mu=c.mu,
                    dp_sgd=c.dp_sgd, dp_noise_multiplier=c.dp_noise_multiplier, dp_max_grad_norm=c.dp_max_grad_norm)
    steps = config.eval.finetune_steps
    finetune = FitConfig(local_steps=steps, batch_size=c.batch_size, lr=c.lr) if steps else None
    params = initial_params(factory, config.seed)
    if config.server.strategy == "ifca":  # k models, each from its own initialisation: they must start apart
        params = np.concatenate([params, *(initial_params(factory, int_seed(config.seed, "init", j))
                                           for j in range(1, config.personal.clusters))])
    return factory, params, fit, finetune


def codec_options(config: Config, deployed: bool = False):
    """The parameters of the codec stages, from `[codec]` and `[privacy]` (a deployed client draws DP
    noise from the operating system instead of the run seed, which the server knows)."""
    c, p = config.codec, config.privacy
    # Distributed noise is split among the fewest clients a secure round can end with (secagg: its
    # threshold; ckks: server.min_clients), so that the sum always carries the noise the accountant counts.
    cohort = config.server.clients_per_round
    noise_clients = max(1, math.ceil(c.secagg_threshold * cohort)) if "secagg" in c.pipeline else \
        max(1, config.server.min_clients) if "ckks" in c.pipeline else cohort
    noise = p.noise_multiplier * p.clip_norm / math.sqrt(noise_clients) if p.mode == "distributed" else 0.0
    return CodecOptions(bits=c.bits, qsgd_bucket=c.qsgd_bucket, topk_fraction=c.topk_fraction,
                        zstd_level=c.zstd_level, clip_norm=p.clip_norm, noise_multiplier=p.noise_multiplier,
                        noise_mode=p.mode, noise_clients=noise_clients, seeded_noise=not deployed,
                        secagg_threshold=c.secagg_threshold, secagg_plus=c.secagg_plus, secagg_bits=c.secagg_bits,
                        secagg_frac_bits=c.secagg_frac_bits, secagg_range=p.clip_norm + 8 * noise,
                        ckks_keys=c.ckks_keys)


def trackers_of(config: Config, run_dir: Path) -> list:
    """The experiment trackers `[tracking]` asks for (fedstack.tracking), built before training: a tracking
    directory that cannot be written is a ConfigError naming `tracking.dir` here, not a failure at round 1."""
    section = config.tracking
    trackers = []
    if section.tensorboard:
        from .tracking import Failsafe, TensorBoardTracker

        log_dir = Path(section.dir) if section.dir else Path(run_dir) / "tensorboard"
        _check_writable(log_dir, "tracking.dir")
        trackers.append(Failsafe(TensorBoardTracker(log_dir, config=config.model_dump()),
                                 f"TensorBoard tracking to {log_dir}"))
    if section.mlflow:
        from .tracking import Failsafe, MLflowTracker

        uri = section.mlflow_uri or f"sqlite:///{Path(run_dir).resolve() / 'mlflow.db'}"
        tracker = MLflowTracker(uri, experiment=section.mlflow_experiment, run_name=Path(run_dir).name,
                                config=config.model_dump())
        trackers.append(Failsafe(tracker, f"MLflow tracking to {uri}"))
    return trackers


def _check_writable(folder: Path, key: str) -> None:
    """Create `folder` and write a probe file in it, or a ConfigError naming `key` and why."""
    import tempfile

    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise ConfigError(key, f"cannot write to {folder}: {exc.strerror or exc}") from None


def contribution_of(config: Config, dataset):
    """The contribution scoring `[contribution]` asks for (loop.ContributionOptions), or None."""
    section = config.contribution
    if not section.method:
        return None
    from .loop.contribute import ContributionOptions, validation_rows

    rows = validation_rows(len(dataset.y), section.validation_examples, config.seed) \
        if section.validation == "train" else None
    return ContributionOptions(methods=tuple(dict.fromkeys(section.method)), validation=rows,
                               test_examples=section.validation_examples, utility=section.utility,
                               payout=section.payout, eps=section.eps,
                               permutations=section.permutations, coalition=section.coalition)
