"""Keras 3 models as a fedstack Trainer, on Keras's torch backend (Chollet et al., "Keras", 2015,
https://keras.io; Keras 3 runs one model on JAX, TensorFlow or PyTorch).

fedstack's torch extra already brings PyTorch, so `KERAS_BACKEND=torch` costs no second tensor library:
Keras adds itself and its small helpers (h5py, optree, namex), about 50 MB, where JAX and Flax on their own
would add about 490 MB. Keras picks its backend once,
when it is first imported, so this module sets `KERAS_BACKEND=torch` unless the environment already
names one, and refuses (FedstackError) a Keras that runs on another backend. Import this module before
your own `import keras` (Keras 3 falls back to TensorFlow otherwise), or set KERAS_BACKEND=torch yourself.

The flat vector is the model's `weights` in Keras's own order (each layer's trainable then non-trainable
weights, layer by layer), as float32. Non-trainable floating-point weights travel with the trainable
ones — BatchNormalization's moving mean and variance are averaged like the rest, as `TorchTrainer`
does with torch's floating buffers — so the model every engine and the server evaluate is the same.
What is not a float (a layer's own integer counter) stays with the trainer: a count has no average.
Random-number state (Dropout's `SeedGenerator`) is not a weight; it is reset from the task's seed at
every fit instead.

Each fit loads the global vector, compiles the model with a fresh optimizer at the task's learning rate
(plain SGD by default; a stateful one such as Adam starts afresh, so no client inherits another's
moments) and runs `train_on_batch` over the client's batches in fedstack's batch order (`batch_order`:
the task's seed, epochs or local steps, batch size); the update is local minus global. A fit is
reproducible bit for bit on every engine: the batches, the dropout masks and the model all follow the
task's seed, and torch runs on one thread in a worker.

Evaluation sums the loss's per-example values over the examples (without the regularisation terms,
which belong to training) and, for a classifier, top-1 and top-3 hits of the model's outputs (logits or
probabilities: their argmax is the same). A regressor reports no accuracy.

Keras is imported only here, when a KerasTrainer is made (`pip install 'fedstack[keras]'`: keras and torch).
"""

from __future__ import annotations

import contextlib
import os
import random
import sys
import warnings
from typing import Any, Callable

import numpy as np

from ..client import EvalResult, FitConfig, FitResult, Trainer, batch_order
from ..errors import FedstackError
from ..extras import require
from ..params import ParamSpec, spec_of

# Keras reads KERAS_BACKEND once, at its first import, and defaults to TensorFlow: set here, when this
# module is imported (it does not import Keras), so that a user's own `import keras` after
# `from fedstack.adapters.keras import KerasTrainer` gets the torch backend too.
os.environ.setdefault("KERAS_BACKEND", "torch")


def import_keras():
    """Keras on the torch backend (set before its first import; refused if it already runs on another)."""
    if "keras" not in sys.modules and os.environ.setdefault("KERAS_BACKEND", "torch") != "torch":
        # Keras would import JAX or TensorFlow and train on it: not what fedstack ships or tests
        raise FedstackError(f"fedstack's Keras adapter runs Keras on the torch backend; KERAS_BACKEND is "
                            f"{os.environ['KERAS_BACKEND']!r}: unset it or set KERAS_BACKEND=torch")
    require("torch", "keras", "KerasTrainer (Keras on the torch backend)")  # torch first: Keras's own error is obscure
    keras = require("keras", "keras", "KerasTrainer")
    backend = keras.backend.backend()
    if backend != "torch":
        raise FedstackError(f"Keras was imported with the {backend!r} backend before fedstack's Keras adapter; "
                            "it runs on the torch backend: set KERAS_BACKEND=torch before Keras is imported")
    return keras


@contextlib.contextmanager
def _seeded(keras, seed: int):
    """Keras's global seed for the block (`keras.utils.set_random_seed`, which also seeds Python's, NumPy's
    and torch's global generators); those three are put back afterwards, so the caller's draws are as before."""
    import torch

    saved = random.getstate(), np.random.get_state(), torch.get_rng_state()
    keras.utils.set_random_seed(int(seed))
    try:
        yield
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        torch.set_rng_state(saved[2])


def _seed31(seed: int, *keys: int) -> int:
    """A seed in [0, 2³¹) from fedstack's (up to 63-bit) seed and keys: NumPy's legacy global seed takes
    32 bits and a Keras SeedGenerator's state is an int32."""
    return int(np.random.SeedSequence([int(seed) & (2**64 - 1), *keys]).generate_state(1)[0] >> 1)


def _numpy(tensor) -> np.ndarray:
    """A torch tensor (a Keras value on the torch backend) as a NumPy array; torch's own conversion, as
    Keras's `convert_to_numpy` goes through `np.array`, which NumPy 2 warns about for torch tensors."""
    if hasattr(tensor, "detach"):
        return tensor.detach().cpu().numpy()
    return np.asarray(tensor)


def _same_rank(y, out):
    """Targets and outputs of the same rank, as Keras's compiled loss (and a Loss's `call`) makes them:
    [n] targets meet [n, 1] outputs as [n, 1] (a plain function would broadcast them to [n, n])."""
    if len(out.shape) == y.ndim + 1:
        return y[..., None], out
    if y.ndim == len(out.shape) + 1 and y.shape[-1] == 1:
        return y[..., 0], out
    return y, out


class KerasTrainer(Trainer):
    """A fedstack Trainer for a Keras 3 model.

    `build`: a function of no arguments that returns a built Keras model (one that starts from
    `keras.Input`, so its weights exist); a module-level function, so that pool and Ray workers can
    pickle it and build their own. `loss`: a Keras loss (a `keras.losses.Loss`, a name or a function of
    (y_true, y_pred)); None takes the loss the model was compiled with, else sparse categorical
    cross-entropy of logits for a classifier (integer labels 0..C−1, as `TorchTrainer`) and mean squared
    error for a regressor. `task`: "classification" or "regression". `optimizer`: "sgd" (no momentum),
    "adam", or a function lr -> a Keras optimizer, made afresh every fit. `seed`: the model's
    initialisation; None draws it from torch's global generator, which fedstack seeds from the run seed
    before it asks a factory for the starting model (`plan.initial_params`), as it does for torch models.

    One prediction per example: outputs [n, classes] (or [n, values] for a regressor).
    """

    capabilities: frozenset[str] = frozenset()  # plain local training: no FedProx, SCAFFOLD or DP-SGD terms

    def __init__(self, build: Callable[[], Any], loss=None, task: str = "classification",
                 optimizer: str | Callable = "sgd", eval_batch_size: int = 100, seed: int | None = None):
        keras = import_keras()
        import torch

        if task not in ("classification", "regression"):
            raise FedstackError(f"KerasTrainer task must be 'classification' or 'regression', got {task!r}")
        if not (callable(optimizer) or optimizer in ("sgd", "adam")):
            raise FedstackError(f"KerasTrainer optimizer must be 'sgd', 'adam' or a function lr -> optimizer, "
                                f"got {optimizer!r}")
        self.keras = keras
        self.task = task
        self.optimizer = optimizer
        self.eval_batch_size = int(eval_batch_size)
        if seed is None:
            seed = int(torch.randint(0, 2**31 - 1, ()).item())
        with _seeded(keras, _seed31(seed, 0)):  # Keras's initialisers draw from its global generator
            self.model = build()
        if not isinstance(self.model, keras.Model):
            raise FedstackError(f"KerasTrainer's build returned {type(self.model).__name__}: expected a keras.Model")
        if not self.model.built or not self.model.weights:
            raise FedstackError("KerasTrainer's build returned a model without weights: start it from keras.Input "
                                "(or call model.build(input_shape)) so its weights exist")
        if loss is None:
            loss = getattr(self.model, "loss", None)
        if loss is None:
            loss = (keras.losses.SparseCategoricalCrossentropy(from_logits=True) if task == "classification"
                    else keras.losses.MeanSquaredError())
        self.loss = loss  # for compile(), which takes a Loss, a name or a function
        # per-example values for evaluation: a Loss's `call`, else the named or given function
        self._per_example = loss.call if isinstance(loss, keras.losses.Loss) else keras.losses.get(loss)
        # what travels: the floating-point weights in Keras's order (integer ones stay: see the module doc)
        self._weights = [w for w in self.model.weights if np.issubdtype(np.dtype(w.dtype), np.floating)]
        self.spec: ParamSpec = spec_of([(w.path, tuple(w.shape)) for w in self._weights])
        ids = {id(w) for w in self.model.weights}
        # Dropout and the other random layers draw from their own SeedGenerator, whose state is an
        # integer variable that advances with every call: reset from each task's seed in `fit`
        self._seed_states = [v for v in self.model.variables
                             if id(v) not in ids and v.path.endswith("seed_generator_state")]

    def get_params(self) -> np.ndarray:
        """The model's current weights as a new flat float32 vector (after `__init__`: its initialisation)."""
        if not self._weights:
            return np.zeros(0, np.float32)
        return np.concatenate([_numpy(w.value).astype(np.float32).ravel() for w in self._weights])

    def set_params(self, params: np.ndarray) -> None:
        """Load a flat vector into the model."""
        if params.shape != (self.spec.size,):
            raise ValueError(f"expected {self.spec.size} parameters, got {params.shape}")
        params = np.asarray(params, np.float32)
        for w, (a, b), shape in zip(self._weights, self.spec.offsets(), self.spec.shapes):
            w.assign(params[a:b].reshape(shape))

    def _make_optimizer(self, lr: float):
        optimizers = self.keras.optimizers
        if callable(self.optimizer):
            return self.optimizer(lr)
        return optimizers.SGD(learning_rate=lr) if self.optimizer == "sgd" else optimizers.Adam(learning_rate=lr)

    def _reseed(self, seed: int) -> None:
        """Every random layer's generator state from the task's seed, so its masks do not depend on which
        clients this trainer served before (a pool worker serves many, the local engine all)."""
        for i, variable in enumerate(self._seed_states):
            variable.assign(np.array([_seed31(seed, 2, i), 0], np.int32))

    def fit(self, params: np.ndarray, data, config: FitConfig, state: Any = None) -> FitResult:
        """Train on the client's training split in fedstack's batch order; return local − global."""
        self.set_params(params)
        self._reseed(config.seed)
        # A fresh optimizer at this task's learning rate; jit_compile off: torch.compile takes seconds
        # per process and its kernels need not round as the eager ones do.
        self.model.compile(optimizer=self._make_optimizer(config.lr), loss=self.loss, jit_compile=False)
        batches = batch_order(np.asarray(data.train_idx), config)
        loss_sum, seen = 0.0, 0
        # unseeded keras.random calls in a user's own layers draw from Keras's global generator: seeded too
        with _seeded(self.keras, _seed31(config.seed, 1)), warnings.catch_warnings():
            # Keras turns each batch's logs into Python numbers by np.array(torch tensor), which NumPy 2
            # warns about (torch's __array__ takes no `copy`); the value is right, the warning is Keras's
            warnings.filterwarnings("ignore", "__array__ implementation doesn't accept a copy", DeprecationWarning)
            for idx in batches:
                logs = self.model.train_on_batch(data.x[idx], data.y[idx], return_dict=True)
                loss_sum += float(logs["loss"]) * len(idx)  # the batch's mean loss (with regularisation)
                seen += len(idx)
        update = self.get_params() - params
        metrics = {"train_loss": loss_sum / seen if seen else float("nan"), "steps": len(batches)}
        return FitResult(update, int(data.num_examples), metrics)

    def evaluate(self, params: np.ndarray, x: np.ndarray, y: np.ndarray) -> EvalResult:
        """Summed per-example loss and hits of `params` on (x, y), in batches of `eval_batch_size`."""
        import torch

        self.set_params(params)
        classifier = self.task == "classification"
        result = EvalResult(0.0, 0 if classifier else None, 0, 0 if classifier else None)
        for i in range(0, len(x), self.eval_batch_size):
            xb, yb = np.ascontiguousarray(x[i:i + self.eval_batch_size]), y[i:i + self.eval_batch_size]
            with torch.no_grad():  # the model called as predict_on_batch calls it, minus its copy through NumPy
                out = self.model(xb, training=False)
                loss = float(_numpy(self._per_example(*_same_rank(yb, out))).astype(np.float64).sum())
            out = _numpy(out)
            if not classifier:
                result = result + EvalResult(loss, None, len(yb), None)
                continue
            top3 = np.argsort(-out, axis=1, kind="stable")[:, :3]
            target = np.asarray(yb).astype(np.int64)
            result = result + EvalResult(loss, int((out.argmax(1) == target).sum()), len(yb),
                                         int((top3 == target[:, None]).any(axis=1).sum()))
        return result
