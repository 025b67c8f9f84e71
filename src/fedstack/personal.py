"""Personalised federated learning: each client keeps parameters of its own beside the shared model.

One global model serves the average client and fails the others when clients' data differ. The
algorithms here keep part of the model, or a whole second model, on each client — client state, in
the run store during a simulation and on the device when deployed — and never send it to the server:

- **Partial sharing.** The flat parameter vector splits into a shared part, averaged as in FedAvg, and a
  personal part that stays on the client (`Split`). FedPer (Arivazhagan et al. 2019, "Federated Learning
  with Personalization Layers") keeps the last layers (`head_split`); FedBN (Li et al. 2021, "FedBN:
  Federated Learning on Non-IID Features via Local Batch Normalization") keeps the normalisation layers
  (`batchnorm_split`); FedRep (Collins et al. 2021, "Exploiting Shared Representations for Personalized
  Federated Learning") keeps the head too, but trains it first with the body frozen, then the body with
  the head frozen (`FedRep`). Only the shared part travels, each way: the bytes shrink to it.
- **A personal model with a global anchor.** Ditto (Li et al. 2021, "Ditto: Fair and Robust Federated
  Learning Through Personalization") trains the global model as FedAvg does and, beside it, a personal
  model v_k on F_k(v_k) + λ/2·‖v_k − w‖² (`Ditto`).
- **Clusters**: IFCA's client (Ghosh et al. 2020) picks, of the k models it receives, the one with the lowest
  loss on its data and trains it (`IFCA`; the server halves of clustered training: fedstack.clustered).
- **Local-only training**, the baseline every personalised method must beat: everything is personal,
  nothing travels (`everything`).

Each algorithm is one object with both halves: the client half (`Personalization`: how a client trains
and what it keeps) travels in each task's `FitConfig.personal` (to a deployed device as `to_wire` encodes
it: a registered kind and its fields); the server half (`fedstack.strategy.Personalized`) averages the
shared part and hands a client that has never trained its first personal part — the initial model's,
which the server's vector keeps unchanged (only shared entries are ever updated).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, is_dataclass, replace

import numpy as np

from .client import FitConfig, FitResult, Trainer
from .errors import FedstackError
from .local_terms import LocalTerm
from .params import ParamSpec

STATE_KEY = "personal"  # where a client's personal part lives in its state (beside "trainer", codec residuals)


@dataclass(frozen=True)
class Split:
    """Which stretches [start, stop) of a flat parameter vector of `size` values are personal; the rest,
    in order, is shared."""

    size: int
    personal: tuple[tuple[int, int], ...] = ()

    def mask(self) -> np.ndarray:
        """True where an entry is personal."""
        mask = np.zeros(self.size, bool)
        for start, stop in self.personal:
            mask[start:stop] = True
        return mask

    def shared_index(self) -> np.ndarray:
        return np.flatnonzero(~self.mask())

    def personal_index(self) -> np.ndarray:
        return np.flatnonzero(self.mask())

    @property
    def shared_size(self) -> int:
        return self.size - sum(stop - start for start, stop in self.personal)

    def join(self, shared: np.ndarray, personal: np.ndarray) -> np.ndarray:
        """The whole vector from its shared and personal parts."""
        whole = np.empty(self.size, np.float32)
        mask = self.mask()
        whole[~mask], whole[mask] = shared, personal
        return whole


def _owner(name: str) -> str:
    return name.rpartition(".")[0]


def _split_of(spec: ParamSpec, personal_owners: set[str]) -> Split:
    """The Split whose personal part is every tensor of the named modules (parameters and buffers)."""
    stretches = [bounds for name, bounds in zip(spec.names, spec.offsets()) if _owner(name) in personal_owners]
    merged: list[tuple[int, int]] = []
    for start, stop in stretches:  # offsets come in order: adjacent tensors make one stretch
        if merged and merged[-1][1] == start:
            merged[-1] = (merged[-1][0], stop)
        else:
            merged.append((start, stop))
    return Split(spec.size, tuple(merged))


def head_split(spec: ParamSpec, layers: int = 1) -> Split:
    """The last `layers` modules that hold tensors are personal (FedPer's and FedRep's head): for a
    classifier, its last linear layer with layers = 1."""
    owners = list(dict.fromkeys(_owner(name) for name in spec.names))
    if not 1 <= layers < len(owners):
        raise ValueError(f"personal.head_layers must be between 1 and {len(owners) - 1} for this model "
                         f"({len(owners)} modules with parameters), got {layers}")
    return _split_of(spec, set(owners[-layers:]))


def batchnorm_split(spec: ParamSpec) -> Split:
    """Every normalisation layer that keeps running statistics (BatchNorm) is personal, weights and
    statistics both (FedBN)."""
    owners = {_owner(name) for name in spec.names if name.rpartition(".")[2] == "running_mean"}
    if not owners:
        raise ValueError("FedBN keeps BatchNorm layers on the clients, and this model has none")
    return _split_of(spec, owners)


def everything(spec: ParamSpec) -> Split:
    """Every parameter is personal: local-only training, no federation."""
    return Split(spec.size, ((0, spec.size),) if spec.size else ())


@dataclass
class Freeze(LocalTerm):
    """Zeroes the gradient of one part of the model (`personal`: its personal part, else its shared part),
    so plain SGD leaves that part where it is: FedRep's alternating updates."""

    split: Split
    personal: bool

    def bind(self, shaped) -> None:
        mask = self.split.mask()
        keep = (~mask if self.personal else mask).astype(np.float32)  # 1 where training may move the weight
        self.keeps = shaped(keep)

    def add_gradients(self, weights: list) -> None:
        for p, keep in zip(weights, self.keeps):
            p.grad.mul_(keep)


@dataclass
class Anchor(LocalTerm):
    """λ/2·‖v − w‖² towards a given model w (Ditto's personal objective), whatever the fit starts from."""

    lam: float
    anchor: np.ndarray

    def bind(self, shaped) -> None:
        self.anchors = shaped(np.ascontiguousarray(self.anchor, np.float32))

    def add_gradients(self, weights: list) -> None:
        for p, w in zip(weights, self.anchors):
            p.grad.add_(p.data - w, alpha=self.lam)


@dataclass(frozen=True)
class Personalization:
    """The client half of a personalised algorithm: given what the client received (the shared part of the
    global model) and its personal part (its state), train, and say what to send and what to keep.

    The default is partial sharing (FedPer, FedBN, local-only: the `split` says which): train the whole
    model, send the change of its shared part, keep its personal part.
    """

    split: Split

    def start(self, received: np.ndarray, personal: np.ndarray) -> np.ndarray:
        """The model a fit starts from: what the client received, with its personal part."""
        return self.split.join(received, personal)

    def needs(self) -> frozenset[str]:
        """What the trainer must be able to do (`Trainer.capabilities`): "terms" to apply the local terms
        this client half adds (FedRep's `Freeze`, Ditto's `Anchor`)."""
        return frozenset()

    def sent_size(self, received: int) -> int:
        """How many values the client sends back, given how many it received (IFCA: one of the k models)."""
        return received

    def first(self, received: np.ndarray, initial: np.ndarray) -> np.ndarray:
        """The personal part of a client that has never trained: the initial model's (`initial`, the server's
        whole vector, whose personal entries the server never changes)."""
        return initial[self.split.mask()].astype(np.float32)

    def own_model(self, trainer, received: np.ndarray, data, personal: np.ndarray) -> np.ndarray:
        """The client's own model, which its held-out data judges (`data`: the client's data, `trainer` to
        evaluate with, for a rule that picks among models)."""
        return self.start(received, personal)

    def fit(self, trainer, received: np.ndarray, data, config: FitConfig, personal: np.ndarray) -> FitResult:
        start = self.start(received, personal)
        result = trainer.fit(start, data, config)
        return self._result(start, start + result.update, result)

    def _result(self, start: np.ndarray, trained: np.ndarray, result: FitResult) -> FitResult:
        """Send the shared part's change; keep the trained personal part."""
        mask = self.split.mask()
        update = (trained[~mask] - start[~mask]).astype(np.float32)
        return FitResult(update, result.num_examples, result.metrics, state=trained[mask].astype(np.float32))


@dataclass(frozen=True)
class FedRep(Personalization):
    """FedRep's client (Collins et al. 2021, Algorithm 1): `head_epochs` epochs on the head with the body
    frozen, then the task's local work on the body with the head frozen; the body's change is sent."""

    head_epochs: int = 10

    def needs(self) -> frozenset[str]:
        return frozenset({"terms"})

    def fit(self, trainer, received: np.ndarray, data, config: FitConfig, personal: np.ndarray) -> FitResult:
        start = self.start(received, personal)
        head = replace(config, epochs=self.head_epochs, local_steps=0)
        # the trainer's fast way (TorchTrainer: a Sequential body's features computed once), else a frozen body
        fast = trainer.fit_head(start, data, head, self.split.mask()) if isinstance(trainer, Trainer) else None
        tuned = start + (fast or trainer.fit(start, data, replace(head, terms=(*config.terms,
                                                                              Freeze(self.split, False))))).update
        body = replace(config, terms=(*config.terms, Freeze(self.split, True)))
        result = trainer.fit(tuned, data, body)
        return self._result(start, tuned + result.update, result)


@dataclass(frozen=True)
class Ditto(Personalization):
    """Ditto's client (Li et al. 2021, Algorithm 1): the global model's local training as in FedAvg (its
    update is sent), then the personal model v_k trained with the same local work on
    F_k(v) + λ/2·‖v − w‖², w the global model received; v_k is kept. Everything is shared (`split`
    personal part empty): the personal model is a second, whole model."""

    lam: float = 0.1

    def needs(self) -> frozenset[str]:
        return frozenset({"terms"})

    def first(self, received: np.ndarray, initial: np.ndarray) -> np.ndarray:
        return np.array(received, np.float32)  # v_k starts as the global model the client received

    def own_model(self, trainer, received: np.ndarray, data, personal: np.ndarray) -> np.ndarray:
        return personal  # v_k

    def fit(self, trainer, received: np.ndarray, data, config: FitConfig, personal: np.ndarray) -> FitResult:
        result = trainer.fit(received, data, config)
        anchored = replace(config, terms=(*config.terms, Anchor(self.lam, received)))
        own = personal + trainer.fit(personal, data, anchored).update
        return FitResult(result.update, result.num_examples, result.metrics, state=own.astype(np.float32))


@dataclass(frozen=True)
class APFL(Personalization):
    """APFL's client (Deng et al. 2020, "Adaptive Personalized Federated Learning", Algorithm 1): beside the
    global model's local training w, a personal model v and a mixing weight α, the client's own model being
    v̄ = α·v + (1 − α)·w. At every local step, on the same batch: w ← w − η∇f(w); v ← v − η·α∇f(v̄);
    α ← α − η⟨v − w, ∇f(v̄)⟩, clipped to [0, 1]. The global model's update is sent; [v; α] is kept. Each
    step is one `trainer.fit` of one batch (the trainer's plain SGD step gives −η∇f), the batch drawn from
    the task's seed and the step's index, so every engine takes the same steps. `split`: all shared."""

    alpha: float = 0.25  # α of a client that has never trained

    def first(self, received: np.ndarray, initial: np.ndarray) -> np.ndarray:
        return np.append(np.asarray(received, np.float32), np.float32(self.alpha))

    def own_model(self, trainer, received: np.ndarray, data, personal: np.ndarray) -> np.ndarray:
        alpha = personal[-1]
        return (alpha * personal[:-1] + (1 - alpha) * received).astype(np.float32)

    def fit(self, trainer, received: np.ndarray, data, config: FitConfig, personal: np.ndarray) -> FitResult:
        w = np.array(received, np.float32)
        v, alpha = np.array(personal[:-1], np.float32), float(personal[-1])
        examples = len(data.train_idx)
        steps = config.local_steps or config.epochs * -(-examples // max(1, config.step_samples(examples)))
        losses = []
        for t in range(steps if examples else 0):
            seed = int(np.random.SeedSequence([config.seed, t]).generate_state(1)[0])  # step t's own batch
            step = replace(config, local_steps=1, seed=seed)
            mixed = (alpha * v + (1 - alpha) * w).astype(np.float32)
            global_step = trainer.fit(w, data, step)
            mixed_step = trainer.fit(mixed, data, step).update  # −η∇f(v̄)
            # every right-hand side at the step's start: w, v and α of the previous step
            v, alpha, w = ((v + np.float32(alpha) * mixed_step).astype(np.float32),
                           float(np.clip(alpha + float(np.dot(v - w, mixed_step)), 0.0, 1.0)),  # α − η⟨v − w, ∇f(v̄)⟩
                           (w + global_step.update).astype(np.float32))
            losses.append(global_step.metrics.get("train_loss", float("nan")))
        update = (w - received).astype(np.float32)
        metrics = {"train_loss": float(np.nanmean(losses)) if losses else float("nan"), "alpha": alpha}
        return FitResult(update, int(data.num_examples), metrics, state=np.append(v, np.float32(alpha)))


def cluster_losses(trainer, models: np.ndarray, data) -> np.ndarray:
    """Each model's mean loss on the client's training split (IFCA's cluster-identity estimate)."""
    idx = data.train_idx
    x, y = data.x[idx], data.y[idx]
    losses = []
    for model in models:
        result = trainer.evaluate(model, x, y)
        losses.append(result.loss if result.examples else 0.0)
    return np.array(losses)


@dataclass(frozen=True)
class IFCA(Personalization):
    """IFCA's client (Ghosh et al. 2020, Algorithm 2, model averaging): pick the cluster whose model has
    the lowest loss on the training split (ties: the lowest index), train it with the task's local work,
    send its update; the cluster's index goes with the fit metrics ("cluster"). `split`: the k stacked
    models, all shared."""

    clusters: int = 2

    def models(self, received: np.ndarray) -> np.ndarray:
        return received.reshape(self.clusters, -1)

    def sent_size(self, received: int) -> int:
        return received // self.clusters

    def choose(self, trainer, received: np.ndarray, data) -> int:
        return int(np.argmin(cluster_losses(trainer, self.models(received), data)))

    def own_model(self, trainer, received: np.ndarray, data, personal) -> np.ndarray:
        return self.models(received)[self.choose(trainer, received, data)]

    def fit(self, trainer, received: np.ndarray, data, config: FitConfig, personal) -> FitResult:
        j = self.choose(trainer, received, data)
        result = trainer.fit(self.models(received)[j], data, config)
        # nothing personal to keep: the cluster is chosen afresh every round, and the server learns it here
        return FitResult(result.update, result.num_examples, {**result.metrics, "cluster": j}, state=personal)


def first_personal(personal: Personalization, received: np.ndarray, initial: np.ndarray) -> np.ndarray:
    """The personal part of a client that has never trained (`Personalization.first`)."""
    return personal.first(received, initial)


# --- the wire: a client half as a deployed server sends it to devices with each personalised task ---

_SCALARS = {"int": int, "float": float, "bool": bool, "str": str, int: int, float: float, bool: bool, str: str}
MAX_WIRE_STRING = 256  # a str field's longest value on the wire
_KINDS: dict[str, type] = {}  # kind name → class


def _wire_fields(cls: type) -> dict[str, type]:
    """A registered class's own fields (all but its split) and their scalar types."""
    return {f.name: _SCALARS[f.type] for f in fields(cls) if f.name != "split"}


def register(kind: str, cls: type) -> type:
    """Let `cls`, a Personalization dataclass, travel to deployed devices as `kind`. Its fields besides the
    split must be int, float, bool or str — what JSON carries and a device can check — and its numbers ≥ 0."""
    if not (isinstance(cls, type) and issubclass(cls, Personalization) and is_dataclass(cls)):
        raise TypeError(f"personal kind {kind!r}: {cls!r} is not a Personalization dataclass")
    odd = [f"{f.name}: {f.type}" for f in fields(cls) if f.name != "split" and (f.type not in _SCALARS or not f.init)]
    if odd:
        raise TypeError(f"personal kind {kind!r}: fields {', '.join(odd)} cannot travel (int, float, bool, str only)")
    if _KINDS.get(kind, cls) is not cls or any(c is cls and k != kind for k, c in _KINDS.items()):
        raise ValueError(f"personal kind {kind!r} or class {cls.__name__} is already registered otherwise")
    _KINDS[kind] = cls
    return cls


register("partial", Personalization)  # FedPer, FedBN, local-only: the split says which
register("fedrep", FedRep)
register("ditto", Ditto)
register("apfl", APFL)
register("ifca", IFCA)


def to_wire(personal: Personalization) -> dict:
    """`personal` as JSON-ready data: its kind, its split (`size`, `personal` stretches), its other fields."""
    kind = next((k for k, c in _KINDS.items() if c is type(personal)), None)
    if kind is None:  # a subclass travels only registered: the device would run its parent's fit otherwise
        raise FedstackError(f"{type(personal).__name__} cannot travel to devices: register it with "
                            "fedstack.personal.register(kind, cls)")
    split = personal.split
    wire = {"kind": kind, "size": int(split.size), "personal": [[int(a), int(b)] for a, b in split.personal]}
    wire.update({name: kind_of(getattr(personal, name)) for name, kind_of in _wire_fields(type(personal)).items()})
    return wire


def _number(key: str, value, integer: bool, limit: int | None = None):
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        raise FedstackError(f"{key}: {'an integer' if integer else 'a number'} expected, got {value!r:.40}")
    if not math.isfinite(value) or value < 0 or (limit is not None and value > limit):
        raise FedstackError(f"{key}: {value!r} is out of bounds (0..{limit if limit is not None else 'any'})")
    return value


def from_wire(wire, max_size: int) -> Personalization:
    """The client half `to_wire` encoded, every field checked (FedstackError, on one line naming the key):
    a known kind, exactly its fields, a split of at most `max_size` values whose stretches are in order
    and within it."""
    if not isinstance(wire, dict):
        raise FedstackError(f"personal: an object expected, got {type(wire).__name__}")
    kind = wire.get("kind")
    cls = _KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise FedstackError(f"personal.kind: unknown {kind!r:.40} (known: {', '.join(sorted(_KINDS))})")
    own = _wire_fields(cls)
    expected = {"kind", "size", "personal", *own}
    missing, unknown = sorted(expected - set(wire)), sorted(set(wire) - expected)
    if missing or unknown:
        said = [f"{', '.join(keys)} {what}" for keys, what in ((missing, "missing"), (unknown, "unknown")) if keys]
        raise FedstackError(f"personal: {kind} takes {', '.join(sorted(expected))} ({'; '.join(said)})"[:300])
    size = _number("personal.size", wire["size"], True, max_size)
    stretches, end = wire["personal"], 0
    if not isinstance(stretches, list):
        raise FedstackError("personal.personal: a list of [start, stop] pairs expected")
    for pair in stretches:
        if not (isinstance(pair, list) and len(pair) == 2):
            raise FedstackError(f"personal.personal: [start, stop] pairs expected, got {pair!r:.40}")
        start, stop = (_number("personal.personal", v, True, size) for v in pair)
        if not end <= start < stop:
            raise FedstackError(f"personal.personal: stretch [{start}, {stop}) is empty, out of order or overlaps")
        end = stop
    values = {}
    for name, kind_of in own.items():
        value, key = wire[name], f"personal.{name}"
        if kind_of in (int, float):
            value = kind_of(_number(key, value, kind_of is int))
        elif not isinstance(value, kind_of) or (kind_of is str and len(value) > MAX_WIRE_STRING):
            raise FedstackError(f"{key}: {'a boolean' if kind_of is bool else 'a short string'} expected, "
                                f"got {value!r:.40}")
        values[name] = value
    try:
        return cls(Split(size, tuple((a, b) for a, b in stretches)), **values)
    except (TypeError, ValueError, FedstackError) as exc:
        raise FedstackError(f"personal: {kind} refuses its fields ({exc})") from None
