"""The typed configuration tree: TOML file, `--set key=value` overrides, validation naming the key."""

from __future__ import annotations

import difflib
import math
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import ConfigError, FedstackError


class Section(BaseModel):
    # strict: TOML has types, so rounds = "2" is a mistake to name, not a string to coerce (an int may
    # still stand for a float: lr = 1)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True)


# A part of the user's own, named "package.module:function" (importable from the working directory).
REFERENCE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
BUILTIN_DATASETS = ("fashion_mnist", "digits", "synthetic", "shakespeare")
BUILTIN_MODELS = ("logreg", "mlp", "cnn", "char_lstm", "word_lstm", "rff")  # rff: fedstack.coded.RffTrainer


def is_reference(name: str) -> bool:
    """Whether a config name is a user's own "package.module:function" rather than a built-in part."""
    return bool(REFERENCE.match(name))


def _builtin_or_reference(value: str, builtins: tuple[str, ...], what: str) -> str:
    if value in builtins or is_reference(value):
        return value
    close = difflib.get_close_matches(value, builtins, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise ValueError(f"unknown {what} {value!r}: {hint}choose one of {', '.join(builtins)}, or name your own as "
                     f"'package.module:function'")


def _optional_reference(value: str) -> str:
    """"" (none), or a user's own "package.module:function"."""
    if value and not is_reference(value):
        raise ValueError("expected 'package.module:function'")
    return value


class DataConfig(Section):
    # a built-in data set, or "package.module:load": a function returning (x, y, x_test, y_test) arrays,
    # partitioned as data.partition says, or a FederatedDataset
    name: str = "fashion_mnist"
    partition: Literal["iid", "dirichlet", "shards", "powerlaw", "clusters", "natural"] = "dirichlet"
    alpha: float = Field(0.5, ge=0)  # Dirichlet concentration (> 0); synthetic: α of Li et al.
    clusters: int = Field(4, ge=1)  # partition "clusters": how many planted groups of clients
    # partition "clusters": group g's images turned 90°·g (IFCA's rotated MNIST), or its labels permuted
    cluster_transform: Literal["rotate", "permute_labels"] = "rotate"
    beta: float = Field(0.0, ge=0)  # synthetic: β of Li et al.
    num_clients: int = Field(100, ge=1)
    path: str = ""
    holdout: float = Field(0.1, ge=0, lt=1)  # fraction of each client's data kept for federated evaluation
    level: Literal["char", "word"] = "char"  # shakespeare: next-character or next-word prediction
    vocab_size: int = Field(5000, ge=1)  # shakespeare words: the most frequent words kept, the rest OOV


    @field_validator("name")
    @classmethod
    def _known_data(cls, value: str) -> str:
        return _builtin_or_reference(value, BUILTIN_DATASETS, "dataset")


class ModelConfig(Section):
    # a built-in model, or "package.module:make_model": a function of no arguments returning a torch.nn.Module
    # (trained with client.optimizer and cross-entropy) or a fedstack.Trainer
    name: str = "cnn"
    # "regression": real-valued targets, mean squared error, no accuracy (a model of your own only)
    task: Literal["classification", "regression"] = "classification"
    # "package.module:function" of (predictions, targets) -> {name: sum over the batch}: your own metrics
    metrics: str = ""

    @field_validator("name")
    @classmethod
    def _known_model(cls, value: str) -> str:
        return _builtin_or_reference(value, BUILTIN_MODELS, "model")

    _metrics_reference = field_validator("metrics")(lambda cls, value: _optional_reference(value))


class ClientConfig(Section):
    epochs: int = Field(1, ge=0)
    local_steps: int = Field(0, ge=0)  # > 0 replaces epochs with a fixed number of SGD steps
    batch_size: int = Field(32, ge=1)
    lr: float = Field(0.05, gt=0)
    optimizer: Literal["sgd", "adam"] = "sgd"
    mu: float = Field(0.0, ge=0)  # FedProx proximal weight
    # With server.deadline_s: a client that would miss the deadline does the local steps that fit before it
    # (FedProx's variable local work; see Server._fit_deadline) and counts, instead of being dropped.
    partial_work: bool = False
    # Record-level DP for organisations: each client trains with DP-SGD (Opacus), per-example clipping + noise
    dp_sgd: bool = False
    dp_noise_multiplier: float = Field(1.0, ge=0)  # DP-SGD noise std / dp_max_grad_norm
    dp_max_grad_norm: float = Field(1.0, gt=0)  # DP-SGD per-example gradient clip
    # Per-round client configuration (fedstack.schedules): the learning rate of round r, and the local epochs
    lr_schedule: Literal["constant", "step", "exponential", "cosine"] = "constant"
    lr_decay: float = Field(0.5, gt=0, le=1)  # step: × this every lr_step_rounds; exponential: × this each round
    lr_step_rounds: int = Field(10, ge=1)
    lr_min: float = Field(0.0, ge=0)  # the floor a decaying rate stops at (cosine anneals towards it)
    # [[round, epochs], ...]: from that round on, that many local epochs (rounds increasing; before the first: epochs)
    epochs_by_round: list[list[int]] = []

    @field_validator("epochs_by_round")
    @classmethod
    def _increasing_rounds(cls, value: list[list[int]]) -> list[list[int]]:
        if any(len(pair) != 2 or pair[0] < 1 or pair[1] < 0 for pair in value):
            raise ValueError("expected [[round, epochs], ...] with round >= 1 and epochs >= 0")
        if any(b[0] <= a[0] for a, b in zip(value, value[1:])):
            raise ValueError("rounds must increase")
        return value


class ServerConfig(Section):
    # a robust rule's name (median, krum, ...) is FedAvg's server step behind that rule (fedstack.strategy.robust)
    strategy: Literal["fedavg", "fedprox", "scaffold", "fedavgm", "fedadagrad", "fedadam", "fedyogi",
                      "fedbuff", "fedasync", "median", "trimmed_mean", "krum", "multi_krum", "norm_bound",
                      "centered_clip", "fltrust", "ditto", "fedper", "fedrep", "fedbn", "local_only", "ifca",
                      "cfl", "apfl", "coded"] = "fedavg"
    # a robust rule in front of another synchronous strategy's server step ("" = none)
    aggregator: Literal["", "median", "trimmed_mean", "krum", "multi_krum", "norm_bound", "centered_clip",
                        "fltrust"] = ""
    byzantine: float = Field(0.2, ge=0)  # krum, multi_krum: f = ⌊byzantine · clients of the round⌋
    krum_m: int = Field(0, ge=0)  # multi_krum: updates averaged (0 = n − f)
    trim_beta: float = Field(0.2, ge=0)  # trimmed_mean: fraction dropped at each end of every coordinate (< 0.5)
    norm_bound: float = Field(0.0, ge=0)  # norm_bound: L2 bound of each update (0 = the round's median norm)
    clip_tau: float = Field(0.0, ge=0)  # centered_clip: clipping radius τ (0 = the median distance to the center)
    clip_iters: int = Field(1, ge=1)  # centered_clip: iterations per round
    root_examples: int = Field(100, ge=1)  # fltrust: size of the server's root dataset
    # Update validation: reject an update whose L2 norm exceeds this × the median norm of its round (0 = off)
    max_norm_ratio: float = Field(0.0, ge=0)
    # Deployment: the largest example count a client may claim for its update's weight (one declared in
    # clients.toml wins); 0 with none declared: deployed updates are weighted equally (claims are unverifiable)
    max_examples: int = Field(0, ge=0)
    rounds: int = Field(20, ge=1)
    clients_per_round: int = Field(10, ge=1)
    min_clients: int = Field(1, ge=0)
    round_retries: int = Field(2, ge=0)  # a round with fewer than min_clients successes is tried again
    deadline_s: float = Field(0.0, ge=0)  # simulated seconds a round waits for results; 0 = no deadline
    overselect: float = Field(0.0, ge=0)  # ask ⌈(1+overselect)·clients_per_round⌉, aggregate the first to arrive
    # who takes part: see fedstack.sampling for what each trades off
    sampler: Literal["uniform", "available", "oort", "poisson"] = "uniform"
    # fedbuff, fedasync (the asynchronous loop): clients training at once (0 = 2 × clients_per_round), and
    # updates per server step (0 = clients_per_round for fedbuff; fedasync steps at each update)
    concurrency: int = Field(0, ge=0)
    buffer_size: int = Field(0, ge=0)
    staleness_exponent: float = Field(0.5, ge=0)  # fedbuff, fedasync: an update τ versions old weighs (1+τ)^-a
    alpha: float = Field(0.6, gt=0, le=1)  # fedasync: mixing weight of a fresh client model
    server_lr: float = Field(1.0, gt=0)  # adaptive server optimizers usually want 0.01–0.1
    momentum: float = Field(0.9, ge=0, lt=1)  # fedavgm
    beta1: float = Field(0.9, ge=0, lt=1)  # fedadam, fedyogi, fedadagrad
    beta2: float = Field(0.99, ge=0, lt=1)
    tau: float = Field(1e-3, gt=0)


class SystemsConfig(Section):
    """The simulated device fleet (fedstack.systems: distributions, tiers and the trace format)."""

    profile: Literal["uniform", "heterogeneous", "trace"] = "uniform"  # uniform: equal devices that never fail
    trace: str = ""  # profile = "trace": the CSV file of the fleet
    trace_period_s: float = Field(0.0, ge=0)  # trace: > 0 repeats its availability intervals with this period
    dropout: float = Field(0.0, ge=0, lt=1)  # probability a client drops out mid-round (any profile)
    speed_median: float = Field(100.0, gt=0)  # samples/s of the median device (uniform: of every device)
    speed_sigma: float = Field(1.0, ge=0)  # heterogeneous: log-normal spread (std of log speed)
    tier_mix: list[float] = [0.5, 0.3, 0.2]  # heterogeneous: fractions of wifi, 4g, 3g bandwidth, summing to 1
    diurnal: bool = False  # heterogeneous: each device is online one daily window of online_hours
    online_hours: float = Field(8.0, gt=0, le=24)


class EngineConfig(Section):
    name: Literal["local", "pool", "ray"] = "pool"
    workers: int = Field(0, ge=0)  # 0 = one per core (ray with an address: one per CPU of the cluster)
    address: str = ""  # ray: "HOST:PORT" of a running cluster's head; "" = start a local Ray


class CodecConfig(Section):
    pipeline: list[str] = []  # client → server, in order, e.g. ["qsgd", "zstd"]
    download: list[str] = []  # server → client (the global model), e.g. ["fp16"]
    bits: int = 8  # qsgd: 1, 2, 4 or 8 bits per coordinate
    qsgd_bucket: int = Field(512, ge=1)  # qsgd: coordinates sharing one norm
    topk_fraction: float = 0.01  # topk / randk: fraction of coordinates sent, in (0, 1]
    zstd_level: int = Field(3, ge=1, le=22)
    secagg_threshold: float = Field(0.6, gt=0.5, le=1)  # secagg: t as a fraction of each client's share holders
    secagg_plus: bool = False  # secagg: O(log n) neighbours per client (SecAgg+) instead of all
    secagg_bits: int = Field(32, ge=16, le=62)  # secagg: sums mod 2**bits
    secagg_frac_bits: int = Field(16, ge=1, le=40)  # secagg: fixed-point resolution 2**-frac_bits
    ckks_keys: str = ""  # ckks: directory written by `fedstack keys`; "" = a fresh key holder per simulation


class DecentralizedConfig(Section):
    topology: Literal["", "ring", "torus", "random_regular", "erdos_renyi", "complete"] = ""  # "" = with a server
    degree: int = Field(4, ge=1)  # random_regular
    p: float = Field(0.3, gt=0, le=1)  # erdos_renyi edge probability
    choco: bool = False  # compressed gossip (CHOCO-SGD) with codec.pipeline
    gamma: float = Field(0.5, gt=0, le=1)  # CHOCO-SGD consensus step size
    node_failure: float = Field(0.0, ge=0, lt=1)  # probability that a node is silent in a round


class PrivacyConfig(Section):
    """Client-level differential privacy (DP-FedAvg) and its accounting (fedstack.dp)."""

    mode: Literal["central", "local", "distributed"] = "central"  # who adds the Gaussian noise
    trusted_server: bool = True  # false: the server may not see un-noised updates or sums (no central mode)
    clip_norm: float = Field(1.0, gt=0)  # L2 bound of each client's update (codec stage "clip")
    noise_multiplier: float = Field(0.0, ge=0)  # noise std = noise_multiplier · clip_norm on the sum
    delta: float = Field(1e-5, gt=0, lt=1)
    epsilon_budget: float = Field(0.0, ge=0)  # > 0: stop before a round would spend more
    accountant: Literal["rdp", "pld"] = "rdp"
    target_quantile: float = Field(0.0, ge=0, lt=1)  # > 0: adaptive clipping to this quantile of update norms
    clip_lr: float = Field(0.2, gt=0)  # adaptive clipping: geometric step size η
    clip_count_stddev: float = Field(0.0, ge=0)  # adaptive clipping: noise on the clipped count (0 = clients/20)


class AttackConfig(Section):
    """Simulated Byzantine clients (fedstack.attack): who is malicious and what they do."""

    name: Literal["", "sign_flip", "gaussian", "scale", "label_flip", "alie", "ipm"] = ""  # "" = no attack
    fraction: float = Field(0.0, ge=0, le=1)  # share of all clients that are malicious, drawn with the run seed
    ids: list[int] = []  # or exactly these clients
    scale: float = Field(0.0, ge=0)  # sign_flip: −scale·Δ; gaussian: std; scale: boost γ (0 = the attack's default)
    collude: bool = True  # alie, ipm: the round's malicious clients pool their honest updates
    omniscient: bool = False  # alie, ipm: they see every honest update of the round
    z: float = Field(0.0, ge=0)  # alie: std-deviations of the shift (0 = Baruch et al.'s z_max from n and f)
    epsilon: float = Field(0.1, gt=0)  # ipm: the malicious update is −epsilon × the honest mean


class PersonalConfig(Section):
    """The personalised and clustered algorithms' own keys (server.strategy = ditto | fedper | fedrep | fedbn |
    local_only | apfl | ifca | cfl)."""

    lam: float = Field(0.1, ge=0)  # ditto: λ, the pull of each personal model towards the global one
    alpha: float = Field(0.25, ge=0, le=1)  # apfl: the mixing weight α a client starts with (then learned)
    head_layers: int = Field(1, ge=1)  # fedper, fedrep: the last layers that stay on each client
    head_epochs: int = Field(10, ge=1)  # fedrep: local epochs on the head (body frozen) before the body's
    clusters: int = Field(2, ge=1)  # ifca: how many models (clusters of clients) the server keeps
    # ifca: a model no client chose for this many rounds in a row is revived as the trained model of the
    # client farthest from its cluster's mean update (k-means' dead-centroid fix; 0 = never, as in the paper)
    ifca_revive: int = Field(0, ge=0)
    # cfl: split a cluster when its mean update's norm < cfl_eps1 and some member's > cfl_eps2, from round cfl_warmup
    cfl_eps1: float = Field(0.4, gt=0)
    cfl_eps2: float = Field(1.6, gt=0)
    cfl_warmup: int = Field(20, ge=1)


class CodedConfig(Section):
    """Coded federated learning (server.strategy = "coded", fedstack.coded) and its model (model.name =
    "rff": linear regression on random Fourier features, which any strategy can train)."""

    features: int = Field(500, ge=1)  # q, the embedding's dimension
    gamma: float = Field(0.01, gt=0)  # the RBF kernel exp(−γ‖x − x'‖²) the features approximate
    # parity rows u as a fraction of all training points (0: none), or "auto": the allocation picks the
    # fraction whose parity upload plus server.rounds rounds take the least simulated time (coded.choose_rows)
    redundancy: float | str = 0.1
    parity_noise: float = Field(0.0, ge=0)  # std of the Gaussian noise a device adds to its parity set
    server_speed: float = Field(10_000.0, gt=0)  # points per second the server processes its parity at
    # the feature map's seed (0: derived from the run seed). A deployed server sends devices the derived one:
    # the map is shared by every party, while the run seed stays the server's
    map_seed: int = Field(0, ge=0)

    @field_validator("redundancy")
    @classmethod
    def _fraction(cls, value):
        if value != "auto" and (isinstance(value, str) or not 0 <= value < 1):
            raise ValueError('a fraction in [0, 1), or "auto"')
        return value


class TrackingConfig(Section):
    """Experiment tracking (fedstack.tracking): callbacks that write every round's figures where the usual
    tools read them. Tracking changes no result: a run resumes whatever these keys say."""

    tensorboard: bool = False  # TensorBoard event files (scalars, per-client histograms, the config as text)
    dir: str = ""  # where the event files go ("": RUN_DIR/tensorboard)
    mlflow: bool = False  # an MLflow run: the config as params, every round's figures as metrics
    mlflow_uri: str = ""  # the tracking server or store ("": a SQLite file, sqlite:///RUN_DIR/mlflow.db)
    mlflow_experiment: str = "fedstack"


class ContributionConfig(Section):
    """Client contribution scores (fedstack.contribution, loop.contribute): each round's participants scored on a
    server-side validation set from their updates — for incentives and to spot free riders."""

    # "shapley" (exact, ≤ 16 clients a round), "gtg" (GTG-Shapley), "loo" (leave-one-out), "cosine"; several may
    # be listed (the first decides the payout); empty: no scores
    method: list[Literal["shapley", "gtg", "loo", "cosine"]] = []
    validation: Literal["train", "test"] = "train"  # drawn with the seed from the training pool, or the test set
    validation_examples: int = Field(1000, ge=1)
    utility: Literal["accuracy", "loss"] = "accuracy"  # of a coalition's model on the validation set
    payout: float = Field(0.0, ge=0)  # > 0: split this budget by accumulated positive contribution
    eps: float = Field(0.005, ge=0)  # GTG-Shapley's truncation threshold on the utility
    permutations: int = Field(20, ge=0)  # GTG-Shapley's most permutations a round (0: ten cycles of n)
    # a coalition's model: its members' weighted "mean" update (FedAvg of the coalition), or each member's
    # "share" of the round's aggregate (a zero update is then a null player)
    coalition: Literal["mean", "share"] = "share"

    @field_validator("method", mode="before")
    @classmethod
    def _listed(cls, value):
        return [value] if isinstance(value, str) else value


class EvalConfig(Section):
    every: int = Field(1, ge=0)  # central test-set evaluation every N rounds (and after the last); 0 = only the last
    federated: bool = True  # evaluate on every client's held-out split after the last round
    federated_every: int = Field(0, ge=0)  # also every N rounds; 0 = only after the last
    finetune_steps: int = Field(0, ge=0)  # > 0: also evaluate each client after this many local steps
    # after the last round, also judge local-only training: each client alone, from the initial model, for
    # local_only_epochs epochs (0: its expected share of the run, ⌈rounds · clients_per_round / clients⌉ ·
    # client.epochs), on its held-out split — the baseline a personalised model must beat
    local_only: bool = False
    local_only_epochs: int = Field(0, ge=0)
    # "package.module:function" of (summed metrics, examples) -> metrics (default: each sum per example)
    metrics_aggregation: str = ""
    # "package.module:function" of [(a client's fit metrics, its examples), ...] -> the round's fit metrics
    # (Flower's fit_metrics_aggregation_fn; default: example-weighted means)
    fit_metrics_aggregation: str = ""

    _aggregation_reference = field_validator("metrics_aggregation", "fit_metrics_aggregation")(
        lambda cls, value: _optional_reference(value))


class Config(Section):
    """A whole run. Keys and defaults are the contract docs/config.md lists (a test keeps the two in step);
    unknown keys are errors."""

    seed: int = 0
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    client: ClientConfig = ClientConfig()
    server: ServerConfig = ServerConfig()
    engine: EngineConfig = EngineConfig()
    codec: CodecConfig = CodecConfig()
    eval: EvalConfig = EvalConfig()
    personal: PersonalConfig = PersonalConfig()
    coded: CodedConfig = CodedConfig()
    decentralized: DecentralizedConfig = DecentralizedConfig()
    systems: SystemsConfig = SystemsConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    attack: AttackConfig = AttackConfig()
    tracking: TrackingConfig = TrackingConfig()
    contribution: ContributionConfig = ContributionConfig()


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=value` → (["a", "b"], value); the value parses as TOML, else stays a string."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(text, "an override must look like key=value, e.g. server.rounds=5")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key.split("."), value


def load_config(path: str | Path | None = None, overrides: list[str] | tuple = ()) -> Config:
    """The config from an optional TOML file plus overrides, validated before any work starts."""
    tree: dict = {}
    if path is not None:
        path = Path(path)
        try:
            tree = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise FedstackError(f"config file not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise FedstackError(f"config file {path} is not valid TOML: {exc}") from None
    for override in overrides:
        keys, value = parse_override(override)
        node = tree
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(".".join(keys), f"'{k}' is not a section")
        node[keys[-1]] = value
    return validate(tree)


# Defaults that depend on the data set, for the keys a config leaves unset. The general ones suit
# Fashion-MNIST; on digits' 1 797 small images a Dirichlet split over 100 clients leaves some clients
# with almost nothing and the CNN at lr 0.05 stays at chance for rounds, so digits ("small and fast")
# gets 10 clients and the 2NN at lr 0.2: about 60% after 3 rounds, 90% after 20.
DATASET_DEFAULTS = {"digits": {("data", "num_clients"): 10, ("model", "name"): "mlp", ("client", "lr"): 0.2}}


def with_dataset_defaults(tree: dict) -> dict:
    """`tree` with its data set's own defaults filled in where it sets nothing (a new tree)."""
    data = tree.get("data")
    name = data.get("name") if isinstance(data, dict) else None
    defaults = DATASET_DEFAULTS.get(name) if isinstance(name, str) else None
    if not defaults:
        return tree
    tree = {key: dict(value) if isinstance(value, dict) else value for key, value in tree.items()}
    for (section, key), value in defaults.items():
        node = tree.setdefault(section, {})
        if isinstance(node, dict):
            node.setdefault(key, value)
    return tree


# The config's vocabulary of parts that other modules implement: it names them, and imports none of them.
RULES = ("median", "trimmed_mean", "krum", "multi_krum", "norm_bound", "centered_clip", "fltrust")  # robust rules
# Rules whose guarantee holds only while fewer than half of a round's clients are Byzantine.
HONEST_MAJORITY = ("median", "trimmed_mean", "krum", "multi_krum", "centered_clip")
TIER_NAMES = ("wifi", "4g", "3g")  # the heterogeneous fleet's network tiers (fedstack.systems.TIERS)


def overselected(k: int, overselect: float) -> int:
    """⌈(1 + overselect) · k⌉: how many clients to ask so that `k` can be aggregated.

    A hair of tolerance keeps products like 1.3 · 10 = 13.000000000000002 at 13.
    """
    return max(k, math.ceil((1.0 + overselect) * k - 1e-9))


def _validate_serverless(config: Config) -> None:
    """A decentralized run's nodes all train every round and gossip: a server's sampling, over-selection,
    deadlines and update screen have nothing to act on, so setting one is refused, not ignored."""
    server = config.server
    for key, set_ in (("server.sampler", server.sampler != "uniform"), ("server.overselect", server.overselect > 0),
                      ("server.deadline_s", server.deadline_s > 0),
                      ("server.max_norm_ratio", server.max_norm_ratio > 0),
                      ("client.partial_work", config.client.partial_work),
                      ("contribution.method", bool(config.contribution.method))):
        if set_:
            raise ConfigError(key, "decentralized runs have no server: every node trains every round and gossips "
                              "with its neighbours (decentralized.node_failure makes nodes silent)")


def validate(tree: dict) -> Config:
    """A Config from a plain tree, or a ConfigError naming the first bad key."""
    tree = with_dataset_defaults(tree)
    try:
        config = Config.model_validate(tree)
    except ValidationError as exc:
        raise _explain(exc.errors()[0], tree) from None
    serverless = bool(config.decentralized.topology)  # every node trains every round: no sampling
    if not serverless and config.server.clients_per_round > config.data.num_clients:
        raise ConfigError("server.clients_per_round", f"{config.server.clients_per_round} is more than "
                          f"data.num_clients = {config.data.num_clients}")
    if not serverless and config.server.min_clients > config.server.clients_per_round:
        raise ConfigError("server.min_clients", f"{config.server.min_clients} is more than "
                          f"server.clients_per_round = {config.server.clients_per_round}")
    _validate_clusters(config)
    _validate_systems(config, serverless)
    _validate_privacy(config, serverless)
    _validate_robustness(config, serverless)
    if config.engine.address and config.engine.name != "ray":
        raise ConfigError("engine.address", f"a Ray cluster's address needs engine.name = \"ray\", "
                          f"not \"{config.engine.name}\"")
    if config.server.strategy == "cfl" and config.server.clients_per_round != config.data.num_clients:
        raise ConfigError("server.clients_per_round", "cfl splits a cluster by comparing all its clients' updates, so "
                          f"every client takes part in every round: set it to data.num_clients = "
                          f"{config.data.num_clients}")
    _validate_coded(config)
    if config.server.strategy == "fedprox" and config.client.mu == 0:
        raise ConfigError("client.mu", "fedprox needs a proximal weight > 0 (with 0 it is fedavg)")
    sequence = {"char_lstm": "char", "word_lstm": "word"}.get(config.model.name)
    if sequence and (config.data.name != "shakespeare" or config.data.level != sequence):
        raise ConfigError("model.name", f"{config.model.name} reads Shakespeare at {sequence} level: "
                          f"set data.name=\"shakespeare\" and data.level=\"{sequence}\"")
    if config.model.task == "regression" and not is_reference(config.model.name):
        raise ConfigError("model.task", f"{config.model.name} is a built-in classifier; a regression needs a model "
                          "of your own (model.name = \"package.module:make_model\")")
    if config.data.name == "shakespeare" and not sequence and not is_reference(config.model.name):
        raise ConfigError("model.name", "shakespeare needs a sequence model: char_lstm (data.level=\"char\") "
                          "or word_lstm (data.level=\"word\")")
    if config.client.epochs == 0 and config.client.local_steps == 0:
        raise ConfigError("client.epochs", "0 epochs and 0 local_steps: clients would do no work")
    return config


def _validate_coded(config: Config) -> None:
    """Coded training: its own model, every client every round, raw gradients, a trusted server."""
    if config.server.strategy != "coded":
        return
    if config.model.name != "rff":
        raise ConfigError("model.name", "coded training is linear regression on random Fourier features: set "
                          f"model.name = \"rff\", not {config.model.name!r}")
    if config.server.clients_per_round != config.data.num_clients:
        raise ConfigError("server.clients_per_round", "coded training asks every client every round: set it to "
                          f"data.num_clients = {config.data.num_clients}")
    if not config.privacy.trusted_server:
        raise ConfigError("privacy.trusted_server", "coded training uploads parity data, a linear function of the "
                          "raw data, which does not keep the privacy of federated learning (Kumar et al. 2021): "
                          "it needs a trusted server")
    if config.codec.pipeline or config.codec.download:
        raise ConfigError("codec.pipeline", "coded training combines exact gradients with the parity gradient: "
                          "no codec may change them")
    if config.server.deadline_s or config.server.overselect:
        raise ConfigError("server.deadline_s", "coded training's load allocation sets the deadline itself")


def _validate_clusters(config: Config) -> None:
    """Planted clusters that cannot be built are refused before any data is read (the data set checks
    what only its samples can say: square images for rotate)."""
    d = config.data
    if d.partition != "clusters":
        return
    if d.clusters > d.num_clients:
        raise ConfigError("data.clusters", f"{d.clusters} groups but data.num_clients = {d.num_clients}: "
                          "each group needs a client")
    if d.cluster_transform == "rotate" and d.clusters > 4:
        raise ConfigError("data.clusters", f"rotate makes at most 4 groups (0°, 90°, 180°, 270°), got {d.clusters}; "
                          "use data.cluster_transform = \"permute_labels\" for more")
    if d.cluster_transform == "permute_labels" and config.model.task == "regression":
        raise ConfigError("data.cluster_transform", "permute_labels permutes classes; a regression's real-valued "
                          "targets have none: use rotate")


def private(config: Config) -> bool:
    """Whether the run is differentially private: DP noise, or at least clipping, is configured."""
    return config.privacy.noise_multiplier > 0 or "clip" in config.codec.pipeline


def _validate_privacy(config: Config, serverless: bool) -> None:
    """DP settings that cannot give the guarantee they promise are refused, naming the key."""
    if "clip" in config.codec.download or "gaussian" in config.codec.download:
        raise ConfigError("codec.download", "clip and gaussian protect client updates: use them in codec.pipeline")
    _validate_summing_stage(config)
    _validate_dp_sgd(config, serverless)
    if not private(config):
        _validate_no_dp(config)
        return
    _validate_dp_noise(config, serverless)
    _validate_dp_accounting(config)


def _validate_summing_stage(config: Config) -> None:
    """Secure aggregation (secagg, ckks): one stage, last, after "clip", for a strategy that needs only the sum."""
    pipeline, server = config.codec.pipeline, config.server
    summing = [stage for stage in pipeline if stage in ("secagg", "ckks")]
    if len(summing) > 1:
        raise ConfigError("codec.pipeline", f"one summing protocol per pipeline, got {summing}")
    if summing:
        stage = summing[0]
        if pipeline[-1] != stage:
            raise ConfigError("codec.pipeline", f"\"{stage}\" must be the last stage (the server only sees the sum; "
                              f"nothing may transform protected values), got {pipeline}")
        if pipeline[0] != "clip":
            raise ConfigError("codec.pipeline", f"\"{stage}\" sums values in a bounded range: put \"clip\" first "
                              f"(with privacy.clip_norm as the bound), got {pipeline}")
        if server.strategy in ("scaffold", "fedbuff", "fedasync"):
            raise ConfigError("server.strategy", f"{server.strategy} needs each client's update; secure aggregation "
                              "gives only their sum")
    if "ckks" in pipeline and config.codec.ckks_keys:
        keys = Path(config.codec.ckks_keys)
        for name in ("ckks_public.bin",):  # the secret file is only on the key holder's machine
            if not (keys / name).is_file():
                raise ConfigError("codec.ckks_keys", f"{keys / name} does not exist: make the keys with "
                                  f"`fedstack keys {keys}`")
    if {"secagg", "ckks"} & set(config.codec.download):
        raise ConfigError("codec.download", "secure aggregation protects uploads only")


def _validate_dp_sgd(config: Config, serverless: bool) -> None:
    """DP-SGD (client.dp_sgd): refused for models, topologies and strategies it cannot account for."""
    if config.client.dp_sgd and config.model.name in ("char_lstm", "word_lstm"):
        raise ConfigError("client.dp_sgd", f"Opacus computes per-example gradients of torch's LSTM only through "
                          f"its own DPLSTM; {config.model.name} is not supported with DP-SGD")
    if config.client.dp_sgd and serverless:
        raise ConfigError("client.dp_sgd", "decentralized (gossip) training keeps no record-level privacy ledger: "
                          "each node's ε would go unreported; DP-SGD runs with a server (synchronous or fedbuff/"
                          "fedasync)")
    if config.client.dp_sgd and config.server.strategy == "scaffold":
        raise ConfigError("client.dp_sgd", "DP-SGD with SCAFFOLD's control variates is not supported")


def _validate_no_dp(config: Config) -> None:
    """A run without differential privacy: no setting may pretend it has some."""
    p = config.privacy
    if "gaussian" in config.codec.pipeline:
        raise ConfigError("codec.pipeline", "\"gaussian\" needs privacy.noise_multiplier > 0 and \"clip\" "
                          "before it")
    for key, value in (("epsilon_budget", p.epsilon_budget), ("target_quantile", p.target_quantile)):
        if value:
            raise ConfigError(f"privacy.{key}", "needs differential privacy: set privacy.noise_multiplier > 0 "
                              "and put \"clip\" first in codec.pipeline")


def _validate_dp_noise(config: Config, serverless: bool) -> None:
    """Where DP clips and noises (privacy.mode): consistent with the pipeline and with trusting the server."""
    p, pipeline = config.privacy, config.codec.pipeline
    if serverless:
        raise ConfigError("privacy.noise_multiplier", "differential privacy is for runs with a server, not "
                          "decentralized ones")
    if pipeline[:1] != ["clip"]:
        raise ConfigError("codec.pipeline", f"differential privacy clips each update first: codec.pipeline must "
                          f"start with \"clip\", got {pipeline}")
    noised_by_clients = p.mode in ("local", "distributed")
    if not p.trusted_server and not noised_by_clients:
        raise ConfigError("privacy.mode", "privacy.trusted_server = false: the server must never see an un-noised "
                          "update or sum, so its noise cannot be central; use \"local\", or \"distributed\" with "
                          "secure aggregation")
    if noised_by_clients and p.noise_multiplier > 0 and pipeline[1:2] != ["gaussian"]:
        raise ConfigError("codec.pipeline", f"privacy.mode = \"{p.mode}\": clients add the noise, so \"gaussian\" "
                          f"must follow \"clip\", got {pipeline}")
    if not noised_by_clients and "gaussian" in pipeline:
        raise ConfigError("codec.pipeline", "privacy.mode = \"central\": the server adds the noise to the sum; "
                          "\"gaussian\" (client-side noise) is for privacy.mode local or distributed")
    if p.mode == "distributed" and not {"secagg", "ckks"} & set(pipeline):
        raise ConfigError("privacy.mode", "distributed noise is private only under secure aggregation: put "
                          "\"secagg\" or \"ckks\" last in codec.pipeline (otherwise the server sees each lightly "
                          "noised update)")


def _validate_dp_accounting(config: Config) -> None:
    """Adaptive clipping, the ε budget and the strategy: only what the privacy accounting covers."""
    p, pipeline, server = config.privacy, config.codec.pipeline, config.server
    if p.target_quantile and p.mode != "central":
        raise ConfigError("privacy.target_quantile", "adaptive clipping is available with privacy.mode = "
                          "\"central\" only (the server must count clipped updates)")
    count_stddev = p.clip_count_stddev or overselected(server.clients_per_round, server.overselect) / 20
    if p.target_quantile and p.noise_multiplier and 2 * count_stddev <= p.noise_multiplier:
        raise ConfigError("privacy.clip_count_stddev", f"adaptive clipping's count noise {count_stddev:g} must exceed "
                          f"privacy.noise_multiplier / 2 = {p.noise_multiplier / 2:g}, or counting clipped updates "
                          "alone spends the whole privacy budget")
    if p.epsilon_budget and not p.noise_multiplier:
        raise ConfigError("privacy.epsilon_budget", "without noise (privacy.noise_multiplier = 0) ε is infinite")
    if server.strategy in ("scaffold", "fedbuff", "fedasync"):
        raise ConfigError("server.strategy", f"{server.strategy} is not supported with differential privacy "
                          "(control variates and asynchronous updates are not accounted for)")
    if p.target_quantile and any(stage not in ("clip", "zstd") for stage in pipeline):
        raise ConfigError("privacy.target_quantile", "adaptive clipping counts the updates that were clipped from "
                          "their norms, so only lossless stages (zstd) may follow \"clip\"")


def robust_rule(server: ServerConfig) -> str:
    """The robust aggregation rule a `[server]` section asks for ("" = none)."""
    return server.strategy if server.strategy in RULES else server.aggregator


def _validate_robustness(config: Config, serverless: bool) -> None:
    """Robust rules, attacks and update validation: refused where their bounds or assumptions fail."""
    rule = robust_rule(config.server)
    _validate_robust_rule(config, rule, serverless)
    _validate_rule_bounds(config.server, rule)
    _validate_attack(config, rule, serverless)


def _validate_robust_rule(config: Config, rule: str, serverless: bool) -> None:
    """A robust rule needs a server that sees each client's update, without DP's clipped mean."""
    server = config.server
    if server.aggregator:
        if server.strategy in RULES:
            raise ConfigError("server.aggregator", f"server.strategy = \"{server.strategy}\" is a robust rule "
                              f"already; put \"{server.aggregator}\" in server.strategy, or a server optimizer there")
        if server.strategy in ("scaffold", "fedbuff", "fedasync"):
            raise ConfigError("server.aggregator", f"a robust rule needs a synchronous strategy that averages "
                              f"client updates; {server.strategy} cannot take one")
    key = "server.aggregator" if server.aggregator else "server.strategy"
    if rule and serverless:
        raise ConfigError(key, "robust aggregation is for runs with a server, not decentralized ones")
    if rule and {"secagg", "ckks"} & set(config.codec.pipeline):
        raise ConfigError(key, f"{rule} needs each client's update; secure aggregation gives only their sum")
    if rule and private(config):
        raise ConfigError(key, f"{rule} with differential privacy is not supported (DP-FedAvg's noise and "
                          "accounting assume the clipped mean)")


def _validate_rule_bounds(server: ServerConfig, rule: str) -> None:
    """The norm filter's ratio and each rule's parameters: within the bounds their guarantees hold in."""
    if rule == "trimmed_mean" and server.trim_beta >= 0.5:
        raise ConfigError("server.trim_beta", f"trimmed_mean drops ⌊β·n⌋ updates from each end of every "
                          f"coordinate and needs β < 0.5, got β = {server.trim_beta}")
    if rule in ("krum", "multi_krum"):
        f = math.floor(server.byzantine * server.clients_per_round)
        if server.clients_per_round <= 2 * f + 2:
            raise ConfigError("server.byzantine", f"{rule} needs n > 2f + 2: with n = server.clients_per_round "
                              f"= {server.clients_per_round} and f = ⌊{server.byzantine} · n⌋ = {f} it is not "
                              f"(raise server.clients_per_round to {2 * f + 3} or lower server.byzantine)")
        if server.krum_m > server.clients_per_round:
            raise ConfigError("server.krum_m", f"multi_krum averages m <= n = {server.clients_per_round} updates, "
                              f"got {server.krum_m}")


def _validate_attack(config: Config, rule: str, serverless: bool) -> None:
    """A simulated attack: its malicious clients exist, and the attack can act on what the server sees."""
    server, attack, pipeline = config.server, config.attack, config.codec.pipeline
    if not attack.name:
        if attack.fraction or attack.ids:
            raise ConfigError("attack.name", "malicious clients need an attack: set attack.name (sign_flip, "
                              "gaussian, scale, label_flip, alie, ipm)")
        return
    if serverless:
        raise ConfigError("attack.name", "attacks are simulated against a server; decentralized runs have none")
    if attack.fraction and attack.ids:
        raise ConfigError("attack.ids", "give either attack.fraction or attack.ids, not both")
    clients = config.data.num_clients
    bad = [i for i in attack.ids if not 0 <= i < clients]
    if bad:
        raise ConfigError("attack.ids", f"client ids must be in [0, {clients}), got {bad}")
    share = attack.fraction or len(set(attack.ids)) / clients
    if share == 0:
        raise ConfigError("attack.fraction", f"attack.name = \"{attack.name}\" needs malicious clients: set "
                          "attack.fraction > 0 or attack.ids")
    if rule in HONEST_MAJORITY and share >= 0.5:
        which = "attack.fraction" if attack.fraction else "attack.ids"
        raise ConfigError(which, f"{rule} is robust only while fewer than half of the clients are Byzantine "
                          f"(malicious share < 0.5), got {share:g}")
    asynchronous = server.strategy in ("fedbuff", "fedasync")
    if asynchronous and attack.name in ("alie", "ipm"):
        raise ConfigError("attack.name", f"{attack.name} crafts its update from the honest updates of a round; "
                          "the asynchronous loop has no rounds of updates")
    if attack.name != "label_flip" and {"secagg", "ckks"} & set(pipeline):
        raise ConfigError("attack.name", f"{attack.name} tampers with decoded updates, which secure aggregation "
                          "never shows the server; only label_flip (a data attack) applies")


def _validate_systems(config: Config, serverless: bool) -> None:
    """The device fleet, deadline, over-selection and partial work: consistent with each other and the data."""

    s, server = config.systems, config.server
    mix = s.tier_mix
    if len(mix) != len(TIER_NAMES) or any(f < 0 for f in mix) or abs(sum(mix) - 1) > 1e-6:
        raise ConfigError("systems.tier_mix", f"expected {len(TIER_NAMES)} non-negative fractions of "
                          f"{', '.join(TIER_NAMES)} devices summing to 1, got {mix}")
    if s.profile == "trace" and not s.trace:
        raise ConfigError("systems.trace", "systems.profile = \"trace\" needs the path of a trace CSV file")
    if s.trace and s.profile != "trace":
        raise ConfigError("systems.trace", f"a trace is read only with systems.profile = \"trace\" "
                          f"(the profile is \"{s.profile}\")")
    if s.diurnal and s.profile != "heterogeneous":
        raise ConfigError("systems.diurnal", "diurnal availability is drawn for systems.profile = "
                          "\"heterogeneous\" (a trace brings its own intervals)")
    if serverless:
        if s.profile != "uniform" or s.dropout:
            raise ConfigError("systems.profile", "decentralized runs do not simulate a device fleet; "
                              "use decentralized.node_failure for silent nodes")
        _validate_serverless(config)
        return
    wanted = overselected(server.clients_per_round, server.overselect)
    if wanted > config.data.num_clients:
        raise ConfigError("server.overselect", f"(1 + {server.overselect}) × server.clients_per_round = {wanted} "
                          f"clients, more than data.num_clients = {config.data.num_clients}")
    asynchronous = server.strategy in ("fedbuff", "fedasync")
    for key, value in (("concurrency", server.concurrency), ("buffer_size", server.buffer_size)):
        if value and not asynchronous:
            raise ConfigError(f"server.{key}", "applies to the asynchronous strategies (fedbuff, fedasync), "
                              f"not to {server.strategy}")
    if asynchronous and server.overselect:
        raise ConfigError("server.overselect", "over-selection belongs to synchronous rounds; an asynchronous "
                          "strategy keeps server.concurrency clients busy instead")
    concurrency = server.concurrency or 2 * server.clients_per_round
    if asynchronous and concurrency > config.data.num_clients:
        raise ConfigError("server.concurrency", f"{concurrency} clients training at once, more than "
                          f"data.num_clients = {config.data.num_clients}")


def _explain(error: dict, tree: dict) -> ConfigError:
    key = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        section = _section_model(error["loc"][:-1])
        valid = list(section.model_fields) if section else []
        close = difflib.get_close_matches(str(error["loc"][-1]), valid, n=1)
        hint = f"; did you mean '{'.'.join([*map(str, error['loc'][:-1]), close[0]])}'?" if close else \
            f"; valid keys here: {', '.join(valid)}"
        return ConfigError(key, "unknown key" + hint)
    return ConfigError(key, f"{error['msg'].lower()} (got {error.get('input')!r})")


def _section_model(loc) -> type[BaseModel] | None:
    model: type[BaseModel] = Config
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return None
        model = field.annotation
    return model


def to_toml(config: Config) -> str:
    """The resolved config as TOML text (saved with every run)."""
    lines = [f"seed = {config.seed}"]
    for name, section in config.model_dump().items():
        if not isinstance(section, dict):
            continue
        lines.append(f"\n[{name}]")
        for key, value in section.items():
            lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)
