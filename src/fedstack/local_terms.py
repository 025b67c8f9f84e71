"""The client halves of algorithms that change local training: terms added to every local gradient.

An algorithm's server half is its Strategy; its client half, where it changes what a client computes, is
a `LocalTerm`. A strategy asks for its terms in each task's FitConfig — FedProx sets `mu` (`Proximal`),
SCAFFOLD sets `scaffold` (`ControlVariates`), a user's own algorithm adds its own term objects to
`FitConfig.terms` — so they reach every engine's clients as part of the task. A trainer applies
`terms_of(config)` and declares which built-in terms it can apply (`Trainer.capabilities`); a strategy whose
clients need what the trainer does not declare is refused before training (`Strategy.client_needs`).

A term sees one fit from start to finish, on a fresh copy:

- `start(received, size, state)`: what the client received (the model, and whatever the strategy
  broadcasts after it) and the client's own state (None on its first round);
- `bind(shaped)`: `shaped(vector)` views a flat float32 vector as tensors shaped like the model's
  parameters, once per fit;
- `add_gradients(weights)`: after each backward pass, add the term's gradient to each `w.grad`;
- `finish(update, steps, lr)`: what the client sends instead of `update` and its new state.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np


class LocalTerm:
    """A term of the local objective; every hook is a no-op by default. `capability` is what a trainer must
    declare to apply it (`Trainer.capabilities`): a built-in term's own name, "terms" for a user's own
    (a trainer that applies `FitConfig.terms`). `extra(size)`: how many values follow the model in what
    the client receives."""

    capability = "terms"

    def extra(self, size: int) -> int:
        return 0

    def start(self, received: np.ndarray, size: int, state: Any) -> None:
        """The fit begins: `received[:size]` is the global model, `state` the client's state."""

    def bind(self, shaped: Callable[[np.ndarray], list]) -> None:
        """Prepare per-parameter tensors (`shaped(vector)`) before the first step."""

    def add_gradients(self, weights: list) -> None:
        """Add the term's gradient to each parameter's `.grad`, after each backward pass."""

    def finish(self, update: np.ndarray, steps: int, lr: float) -> tuple[np.ndarray, Any]:
        """(what the client sends, its new state — None: no state of this term)."""
        return update, None


@dataclass
class Proximal(LocalTerm):
    """FedProx's client half (Li et al. 2020, "Federated Optimization in Heterogeneous Networks"):
    the gradient of mu/2·‖w − w_global‖², pulling local training towards the global model."""

    mu: float
    capability = "proximal"

    def start(self, received: np.ndarray, size: int, state: Any) -> None:
        self.anchor = np.array(received[:size], dtype=np.float32)

    def bind(self, shaped) -> None:
        self.anchors = shaped(self.anchor)

    def add_gradients(self, weights: list) -> None:
        for p, p0 in zip(weights, self.anchors):
            p.grad.add_(p.data - p0, alpha=self.mu)


@dataclass
class ControlVariates(LocalTerm):
    """SCAFFOLD's client half (Karimireddy et al. 2020), option II: the client receives [x; c], corrects
    every gradient by c − cᵢ (cᵢ: its own control variate, its state), and sends [y − x; cᵢ⁺ − cᵢ] with
    cᵢ⁺ = cᵢ − c + (x − y)/(K·lr), its new state."""

    capability = "control_variates"

    def extra(self, size: int) -> int:
        return size

    def start(self, received: np.ndarray, size: int, state: Any) -> None:
        if received.shape != (2 * size,):
            raise ValueError(f"scaffold expects [params; control] of {2 * size} values, got {received.shape}")
        self.control = received[size:]
        self.own = np.zeros(size, np.float32) if state is None else np.asarray(state, np.float32)

    def bind(self, shaped) -> None:
        self.corrections = shaped(self.control - self.own)  # c − cᵢ, added to every gradient

    def add_gradients(self, weights: list) -> None:
        for p, c in zip(weights, self.corrections):
            p.grad.add_(c)

    def finish(self, update: np.ndarray, steps: int, lr: float) -> tuple[np.ndarray, Any]:
        own = self.own
        new_own = own - self.control - update / np.float32(steps * lr) if steps else own
        return np.concatenate([update, new_own - own]), new_own.astype(np.float32)


def terms_of(config) -> list[LocalTerm]:
    """The terms a FitConfig asks for, fresh copies, in the order their gradients are added: FedProx's,
    SCAFFOLD's, then the config's own `terms`."""
    terms: list[LocalTerm] = []
    if config.mu > 0:
        terms.append(Proximal(config.mu))
    if config.scaffold:
        terms.append(ControlVariates())
    terms.extend(copy.copy(t) for t in config.terms)
    return terms
