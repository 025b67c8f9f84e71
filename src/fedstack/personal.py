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
- **Local-only training**, the baseline every personalised method must beat: everything is personal,
  nothing travels (`everything`).

Each algorithm is one object with both halves: the client half (`Personalization`: how a client trains
and what it keeps) travels in each task's `FitConfig.personal`; the server half
(`fedstack.strategy.Personalized`) averages the shared part and hands a client that has never trained
its first personal part — the initial model's, which the server's vector keeps unchanged (only shared
entries are ever updated).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .client import FitConfig, FitResult
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

    def fit(self, trainer, received: np.ndarray, data, config: FitConfig, personal: np.ndarray) -> FitResult:
        start = self.start(received, personal)
        head = replace(config, epochs=self.head_epochs, local_steps=0, terms=(*config.terms, Freeze(self.split, False)))
        tuned = start + trainer.fit(start, data, head).update
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

    def own_model(self, trainer, received: np.ndarray, data, personal: np.ndarray) -> np.ndarray:
        return personal  # v_k (a client that never trained starts from the global model: `first_personal`)

    def fit(self, trainer, received: np.ndarray, data, config: FitConfig, personal: np.ndarray) -> FitResult:
        result = trainer.fit(received, data, config)
        anchored = replace(config, terms=(*config.terms, Anchor(self.lam, received)))
        own = personal + trainer.fit(personal, data, anchored).update
        return FitResult(result.update, result.num_examples, result.metrics, state=own.astype(np.float32))


def first_personal(personal: Personalization, received: np.ndarray, initial: np.ndarray) -> np.ndarray:
    """The personal part of a client that has never trained: Ditto's v_k starts as the global model it
    received; a split model's personal part as the initial model's (`initial`, the server's whole vector)."""
    if isinstance(personal, Ditto):
        return np.array(received, np.float32)
    return initial[personal.split.mask()].astype(np.float32)
