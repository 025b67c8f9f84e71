"""Local training: the Trainer protocol, its result types, and TorchTrainer for any nn.Module."""

from __future__ import annotations

import contextlib
import contextvars
import math
import warnings
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np

from .dp.dp_sgd import DPSGDSteps
from .errors import FedstackError
from .local_terms import LocalTerm, terms_of
from .params import ParamSpec, spec_of


@dataclass(frozen=True)
class FitConfig:
    """What one client is asked to do in one round."""

    epochs: int = 1
    local_steps: int = 0  # > 0: exactly this many SGD steps instead of epochs
    batch_size: int = 32
    lr: float = 0.05
    seed: int = 0  # drives batch order; derived from the run seed, round and client id
    mu: float = 0.0  # FedProx proximal weight: adds mu/2·‖w − w_global‖² to the local objective
    scaffold: bool = False  # SCAFFOLD: params arrive as [x; c], the update returns as [Δy; Δc]
    clip_norm: float = 0.0  # DP: the L2 bound the "clip" codec applies this round (adaptive clipping moves it)
    dp_sgd: bool = False  # record-level DP: DP-SGD with per-example clipping and noise (Opacus)
    dp_noise_multiplier: float = 1.0
    dp_max_grad_norm: float = 1.0
    flip_labels: int = 0  # a simulated label-flipping client (fedstack.attack): trains on y → C − 1 − y, C = this
    terms: tuple[LocalTerm, ...] = ()  # a user's own local terms (fedstack.local_terms), after the built-in ones
    # a personalised algorithm's client half (fedstack.personal.Personalization): it runs the fit, keeps the
    # client's personal part and says what is sent
    personal: Any = None
    # coded training's round 0 (fedstack.coded.ParityRequest): the client sends its parity set, not an update
    parity: Any = None

    def __post_init__(self):
        """The same checks as the config's client.* keys, so the Python API cannot train with lr = −1."""
        for name, low, strict in (("epochs", 0, False), ("local_steps", 0, False), ("batch_size", 1, False),
                                  ("lr", 0, True), ("mu", 0, False), ("clip_norm", 0, False),
                                  ("dp_noise_multiplier", 0, False), ("dp_max_grad_norm", 0, True),
                                  ("flip_labels", 0, False)):
            value = vars(self)[name]
            integer = name in ("epochs", "local_steps", "batch_size", "flip_labels")
            kinds = (int, np.integer) if integer else (int, float, np.number)
            if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value) \
                    or value < low or (strict and value == low):
                raise FedstackError(f"FitConfig.{name} must be {'an integer' if integer else 'a number'} "
                                    f"{'>' if strict else '>='} {low}, got {value!r}")

        if not isinstance(self.terms, tuple) or not all(isinstance(t, LocalTerm) for t in self.terms):
            raise FedstackError(f"FitConfig.terms must be a tuple of fedstack.LocalTerm objects, got {self.terms!r}")

    def needs(self) -> frozenset[str]:
        """The trainer capabilities this config's local work needs (`Trainer.capabilities`)."""
        wanted = {"proximal": self.mu > 0, "control_variates": self.scaffold, "dp_sgd": self.dp_sgd}
        return frozenset(name for name, on in wanted.items() if on) | {t.capability for t in self.terms}

    def samples(self, num_examples: int) -> int:
        """How many examples a client with `num_examples` processes under this config."""
        if self.local_steps > 0:
            return self.local_steps * self.step_samples(num_examples)
        return self.epochs * num_examples

    def step_samples(self, num_examples: int) -> int:
        """The examples one local step takes (a full batch, or all of a smaller client's data).

        A client asked to stop early (partial work) runs `local_steps = s` with the same seed:
        its batches are the first `s` of those the full config would visit (`batch_order`).
        """
        return min(self.batch_size, num_examples)


@dataclass(frozen=True)
class Task:
    """One client's work in one round; `state` is the client's state where the server keeps it.

    `span` = (start, stop): the client trains the slice [start, stop) of the vector the engine was
    given instead of all of it (decentralized nodes each hold their own model in one stacked vector).
    `protocol` = (stage, message): a protocol step the task is part of (a deployed secure round's
    masked-input request): the client answers with that step's reply instead of its encoded update.
    """

    round: int
    client_id: int
    config: FitConfig
    state: Any = field(default=None, repr=False, compare=False)
    span: tuple[int, int] | None = None
    protocol: tuple[str, bytes] | None = field(default=None, repr=False)


def flip_labels(y: np.ndarray, num_classes: int) -> np.ndarray:
    """y → C − 1 − y for C = num_classes; negative (ignored) targets stay as they are."""
    return np.where(y >= 0, num_classes - 1 - y, y).astype(y.dtype)


def flipped(data, num_classes: int):
    """A client's data with its training labels flipped (`flip_labels`); the shared arrays are not touched."""
    y = data.y.copy()
    idx = np.asarray(data.train_idx)
    y[idx] = flip_labels(data.y[idx], num_classes)
    return replace(data, y=y)


@dataclass
class FitResult:
    """A client's contribution: update = local params − global params (flat float32)."""

    update: np.ndarray
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)
    state: Any = None  # client state to persist across rounds (None: stateless)


@dataclass
class EvalResult:
    """Summed loss and correct predictions (top-1 and top-3) over some examples; adds up across shards
    and clients. A regression (or any task without classes) leaves `correct` None: it has no accuracy.
    `sums` holds the task's own metrics as sums over the examples (squared errors, true positives, ...);
    `metrics()` is each one's mean per example — the right aggregate for sums, whatever the shards.

    For a sequence model an "example" is one predicted position whose target is not ignored.
    """

    loss_sum: float = 0.0
    correct: int | None = 0
    examples: int = 0
    correct_top3: int | None = 0
    sums: dict[str, float] = field(default_factory=dict)

    def __add__(self, other: "EvalResult") -> "EvalResult":
        sums = dict(self.sums)
        for name, value in other.sums.items():
            sums[name] = sums.get(name, 0.0) + value
        return EvalResult(self.loss_sum + other.loss_sum, _add(self.correct, other.correct),
                          self.examples + other.examples, _add(self.correct_top3, other.correct_top3), sums)

    def metrics(self) -> dict[str, float]:
        """Each of `sums` per example (empty without examples)."""
        return {name: value / self.examples for name, value in self.sums.items()} if self.examples else {}

    @property
    def loss(self) -> float:
        return self.loss_sum / self.examples if self.examples else float("nan")

    @property
    def accuracy(self) -> float | None:
        if self.correct is None:
            return None
        return self.correct / self.examples if self.examples else float("nan")

    @property
    def top3_accuracy(self) -> float | None:
        if self.correct_top3 is None:
            return None
        return self.correct_top3 / self.examples if self.examples else float("nan")


def _add(a: int | None, b: int | None) -> int | None:
    """Counts that add up, or None once a part has none (no classes, no accuracy)."""
    return None if a is None or b is None else a + b


def mean_squared_error(out, y, reduction: str = "mean"):
    """The regression loss: squared error summed over a target's values, averaged (or summed) over examples;
    a one-output model's [n, 1] predictions meet [n] targets."""
    if out.dim() == 2 and out.shape[1] == 1 and y.dim() == 1:
        out = out[:, 0]
    errors = (out - y) ** 2
    per_example = errors.reshape(len(errors), -1).sum(1)
    return per_example.sum() if reduction == "sum" else per_example.mean()


# True while an engine evaluates params it will not evaluate again (a coalition model a contribution score judges
# on the validation set, in one task): a trainer may skip work that pays off only over several evaluations of the
# same params (TorchTrainer's frozen copy under jit_eval). Set by `engine.execute`, from the task alone.
EVALUATED_ONCE: contextvars.ContextVar[bool] = contextvars.ContextVar("evaluated_once", default=False)


class Trainer:
    """Trains and evaluates one model on one client's data; reused for every client of a worker.

    `fit` returns local − global as a FitResult; `evaluate` sums loss and correct predictions.
    `capabilities` declares what it applies beyond plain training ("proximal": FedProx's term,
    "control_variates": SCAFFOLD's, "dp_sgd": DP-SGD, "terms": a config's own `FitConfig.terms`): a
    strategy whose clients need one it does not declare is refused before training. Any object with
    `fit` and `evaluate` trains too; it then declares nothing. A toy that "learns" by moving halfway
    to the mean of its data::

        class MeanTrainer(Trainer):
            def fit(self, params, data, config, state=None):
                target = data.x[data.train_idx].mean(axis=0).ravel()
                return FitResult(update=(target - params) / 2, num_examples=data.num_examples)

            def evaluate(self, params, x, y):
                err = ((x.reshape(len(x), -1) - params) ** 2).sum(axis=1)
                return EvalResult(loss_sum=float(err.sum()), correct=0, examples=len(x))
    """

    capabilities: frozenset[str] = frozenset()

    def fit(self, params: np.ndarray, data: Any, config: FitConfig, state: Any = None) -> FitResult:
        raise NotImplementedError(f"{type(self).__name__} does not train")

    def evaluate(self, params: np.ndarray, x: np.ndarray, y: np.ndarray) -> EvalResult:
        raise NotImplementedError(f"{type(self).__name__} does not evaluate")

    def get_params(self) -> np.ndarray | None:
        """The model's current parameters as a flat float32 vector (None: it does not say; then the initial
        vector's length is not checked before training)."""
        return None

    def on_device(self) -> None:
        """Called once on a deployed device, before its first task: from now on draw the secrets this party
        must keep (DP noise, a parity encoding) from the operating system's entropy, not from the run seed,
        which would let another party recompute them. Simulations never call it (they replay bit for bit)."""

    def fit_head(self, params: np.ndarray, data: Any, config: FitConfig, head: np.ndarray) -> FitResult | None:
        """Train only the parameters where the mask `head` is True, the rest frozen, as `fit` would with a
        frozen body (FedRep's head epochs) — but faster, or None: this trainer cannot here, and the caller
        takes `fit` with a `Freeze` term. TorchTrainer computes a Sequential body's features once."""
        return None


def capabilities(trainer) -> frozenset[str]:
    """What a trainer declares it can apply (nothing, for an object that is not a fedstack.Trainer)."""
    return trainer.capabilities if isinstance(trainer, Trainer) else frozenset()


def batch_order(indices: np.ndarray, config: FitConfig) -> list[np.ndarray]:
    """The batches of `indices` one fit visits: shuffled each epoch from config.seed.

    With `local_steps` > 0 it yields exactly that many batches, reshuffling as epochs run out.
    """
    rng = np.random.default_rng(config.seed)
    batches: list[np.ndarray] = []
    want = config.local_steps if config.local_steps > 0 else None
    epochs = 0
    while (want is None and epochs < config.epochs) or (want is not None and len(batches) < want):
        order = indices[rng.permutation(len(indices))]
        batches.extend(order[i:i + config.batch_size] for i in range(0, len(order), config.batch_size))
        epochs += 1
        if len(indices) == 0:
            break
    return batches[:want] if want is not None else batches


class TorchTrainer(DPSGDSteps, Trainer):
    """A Trainer for any torch.nn.Module: cross-entropy by default, SGD by default.

    The module's parameters become views into one flat buffer, so loading the global
    vector or reading the local one is a single memory copy. With `jit_eval`, evaluation
    runs a frozen TorchScript copy of the model (for models torch.jit.trace can follow).

    `task="regression"` trains on real-valued targets (mean squared error by default) and reports no
    accuracy; `metrics(predictions, targets)` adds the task's own metrics, as sums over each batch
    (`EvalResult.sums`), to every evaluation.

    Sequence models return logits [batch, time, classes] for targets [batch, time]: every
    position is a prediction, and positions whose target is -1 are ignored in loss and accuracy.

    Client algorithms, switched on by the FitConfig: its local terms (`local_terms`: FedProx's
    proximal term, SCAFFOLD's control variates, a user's own) add their gradients at every step.

    Record-level DP (`dp_sgd`): DP-SGD (Abadi et al. 2016, "Deep Learning with Differential
    Privacy", CCS'16) through Opacus (Yousefpour et al. 2021, "Opacus: User-Friendly Differential
    Privacy Library in PyTorch"); see `fit`, `_per_example_gradients` and `_dp_optimizer`. By
    default (`dp_seeded_noise`) the noise is drawn from a generator seeded from `config.seed`, so a
    fit is reproducible bit for bit in simulation, and anyone who knows the seed can subtract the
    noise. A deployed client clears `dp_seeded_noise` (noise seeded from the OS's entropy, as the
    "gaussian" codec's `seeded_noise=False`), or, for the guarantee against an attacker who studies
    torch's generator and floating-point noise too, sets `dp_secure_mode` (Opacus's secure mode:
    a CSPRNG from torchcsprng and noise robust to floating-point attacks). Neither is reproducible.
    The batches still follow `config.seed`: against a party who knows it, the amplification by
    subsampling that ε counts on does not hold.
    """

    capabilities = frozenset({"proximal", "control_variates", "dp_sgd", "terms"})

    def __init__(self, model, loss_fn: Callable | None = None, optimizer: str | Callable = "sgd",
                 eval_batch_size: int = 100, jit_eval: bool = False, dp_seeded_noise: bool = True,
                 dp_secure_mode: bool = False, task: str = "classification", metrics: Callable | None = None):
        from .extras import require

        torch = require("torch", "torch", "TorchTrainer")

        if task not in ("classification", "regression"):
            raise FedstackError(f"TorchTrainer task must be 'classification' or 'regression', got {task!r}")
        self.torch = torch
        self.model = model
        self.task = task
        self.metrics = metrics  # (predictions, targets) -> {name: sum over the batch}: the task's own metrics
        default_loss = torch.nn.functional.cross_entropy if task == "classification" else mean_squared_error
        self.loss_fn = loss_fn or default_loss
        self.optimizer = optimizer
        self.eval_batch_size = eval_batch_size
        self.jit_eval = jit_eval
        self._frozen = None  # (params it was built from, frozen module)
        self.dp_seeded_noise = dp_seeded_noise
        self.dp_secure_mode = dp_secure_mode
        self._grad_sampler = None  # Opacus's GradSampleModule around self.model, made by the first DP-SGD fit
        named = list(model.named_parameters())
        # Floating-point buffers (BatchNorm's running statistics) travel with the parameters, as in a
        # state_dict: averaged like them, and the model every engine and the server evaluate is the same.
        # Integer buffers (BatchNorm's num_batches_tracked) stay with the trainer: a count has no average.
        buffers = [(n, b) for n, b in model.named_buffers() if b.is_floating_point()]
        self.spec: ParamSpec = spec_of([(n, tuple(t.shape)) for n, t in named + buffers])
        self._flat = torch.zeros(self.spec.size, dtype=torch.float32)
        offsets = self.spec.offsets()
        for (_, p), (a, b) in zip(named, offsets):
            self._flat[a:b].copy_(p.data.reshape(-1))
            p.data = self._flat[a:b].view(p.shape)
        for (name, buffer), (a, b) in zip(buffers, offsets[len(named):]):
            # a view into the flat vector: BatchNorm updates its statistics in place, so they land there
            self._flat[a:b].copy_(buffer.reshape(-1))
            owner, _, attr = name.rpartition(".")
            model.get_submodule(owner)._buffers[attr] = self._flat[a:b].view(buffer.shape)

    def on_device(self) -> None:
        """DP-SGD noise on a device: seeded from the operating system, which no other party can recompute."""
        self.dp_seeded_noise = False

    def get_params(self) -> np.ndarray:
        """The model's current parameters as a new flat float32 vector."""
        return self._flat.numpy().copy()

    def set_params(self, params: np.ndarray) -> None:
        """Load a flat vector into the model."""
        if params.shape != (self.spec.size,):
            raise ValueError(f"expected {self.spec.size} parameters, got {params.shape}")
        self._flat.copy_(self.torch.from_numpy(np.ascontiguousarray(params, dtype=np.float32)))

    def _make_optimizer(self, lr: float):
        if callable(self.optimizer):
            return self.optimizer(self.model.parameters(), lr)
        if self.optimizer == "sgd":
            return _PlainSGD(list(self.model.parameters()), lr)
        if self.optimizer == "adam":
            return self.torch.optim.Adam(self.model.parameters(), lr=lr)
        raise ValueError(f"unknown optimizer {self.optimizer!r} (sgd | adam)")

    def fit(self, params: np.ndarray, data, config: FitConfig, state: Any = None) -> FitResult:
        """Train on the client's training split; return local − global.

        The config's local terms (`local_terms.terms_of`: FedProx's proximal term, SCAFFOLD's control
        variates, the config's own) add their gradients after each backward pass; `params` is what the
        client received (SCAFFOLD: [x; c]), `state` the client's state, and the terms shape what is sent back.

        Under `config.dp_sgd` every step is a DP-SGD step (Abadi et al. 2016, Algorithm 1): each
        example's gradient is clipped to L2 norm C = `dp_max_grad_norm`, the clipped gradients are
        summed, Gaussian noise of std z·C (z = `dp_noise_multiplier`) is added, and the sum is divided
        by the fixed `batch_size`. The metrics then hold `dp_steps` and `dp_sample_rate` (batch_size /
        training examples, capped at 1), what a `privacy.RecordLevelLedger` needs for this client's ε.
        """
        if config.dp_sgd:
            self._fit_dp_check(config)
        terms, size = terms_of(config), self.spec.size
        for term in terms:
            term.start(params, size, state)
        if any(term.extra(size) for term in terms):
            params = params[:size]
        self.set_params(params)
        self.model.train()
        weights = list(self.model.parameters())
        views = self.spec.offsets()

        def shaped(vector: np.ndarray) -> list:
            flat = self.torch.from_numpy(vector)
            return [flat[a:b].view(p.shape) for p, (a, b) in zip(weights, views)]

        for term in terms:
            term.bind(shaped)
        steps, loss_sum, seen = self._steps(data, config, weights, terms)
        update = self._flat.numpy() - params
        metrics = {"train_loss": loss_sum / seen if seen else float("nan"), "steps": steps}
        if config.dp_sgd:
            metrics["dp_steps"] = steps
            examples = len(data.train_idx)
            metrics["dp_sample_rate"] = min(1.0, config.batch_size / examples) if examples else 0.0
        new_state = None
        for term in terms:
            update, term_state = term.finish(update, steps, config.lr)
            new_state = term_state if term_state is not None else new_state
        return FitResult(update=update, num_examples=int(data.num_examples), metrics=metrics, state=new_state)

    def _steps(self, data, config: FitConfig, weights: list, terms: list) -> tuple[int, float, int]:
        """The local SGD (or DP-SGD) steps of one fit: (steps, summed training loss, examples it sums over)."""
        torch, dp = self.torch, config.dp_sgd
        loss_sum, seen, steps = 0.0, 0, 0
        with self._per_example_gradients() if dp else contextlib.nullcontext():
            opt = self._make_optimizer(config.lr)
            if dp:
                opt = self._dp_optimizer(opt, config)
            for idx in batch_order(data.train_idx, config):
                x = torch.from_numpy(data.x[idx])
                y = torch.from_numpy(data.y[idx])
                opt.zero_grad()
                out, y = _predictions(self.model(x), y)
                # Nothing to learn from a batch whose targets are all ignored; but a DP-SGD step is
                # taken (and its noise released) whatever the batch holds, as the accounting assumes.
                if len(y) == 0 and not dp:
                    continue
                # DP-SGD clips the gradient of each example's own loss: summed, not averaged over
                # the batch, whose denominator would make one example's gradient depend on the others.
                loss = self.loss_fn(out, y, reduction="sum") if dp else self.loss_fn(out, y)
                loss.backward()
                if dp:  # p.grad ← (Σᵢ clip(gᵢ, C) + N(0, z²C²)) / batch_size
                    opt.pre_step()
                with torch.no_grad():
                    # A local term depends on no example, so adding it after the noise costs no privacy.
                    for term in terms:
                        term.add_gradients(weights)
                (opt.original_optimizer if dp else opt).step()
                steps += 1
                # The training loss is a statistic of the records that DP-SGD does not noise: sent
                # as is, it would leak outside ε (Oort's utility reads it). Under DP-SGD it is NaN,
                # which readers of train_loss skip.
                if not dp:
                    loss_sum += loss.item() * len(y)
                    seen += len(y)
        return steps, loss_sum, seen

    def fit_head(self, params: np.ndarray, data, config: FitConfig, head: np.ndarray) -> FitResult | None:
        """The head's training with the body frozen, on the body's features computed once: a frozen body
        computes the same features in every epoch, so its forward pass need not be repeated (and nothing
        flows back through it). Possible for a Sequential model whose head is its trailing modules, whose body
        behaves alike in training and evaluation (no dropout, no batch statistics), with plain SGD and no
        local term, DP-SGD or proximal weight; None otherwise. The batches, loss and steps are `fit`'s."""
        cut = self._head_start(head)
        if cut is None or config.dp_sgd or config.mu or config.scaffold or config.terms or config.personal \
                or config.flip_labels or self.optimizer != "sgd":
            return None
        torch = self.torch
        self.set_params(params)
        body, top = self.model[:cut], self.model[cut:]
        idx = np.asarray(data.train_idx)
        with torch.no_grad():
            features = torch.cat([body(torch.from_numpy(data.x[idx[i:i + 1000]]))
                                  for i in range(0, len(idx), 1000)]) if len(idx) else None
        row = np.zeros(len(data.x), np.int64)
        row[idx] = np.arange(len(idx))  # where each training example's features are
        top.train()
        opt = _PlainSGD(list(top.parameters()), config.lr)
        steps, loss_sum, seen = 0, 0.0, 0
        for batch in batch_order(idx, config):
            out, y = _predictions(top(features[torch.from_numpy(row[batch])]), torch.from_numpy(data.y[batch]))
            if len(y) == 0:
                continue
            opt.zero_grad()
            loss = self.loss_fn(out, y)
            loss.backward()
            opt.step()
            steps += 1
            loss_sum += loss.item() * len(y)
            seen += len(y)
        metrics = {"train_loss": loss_sum / seen if seen else float("nan"), "steps": steps}
        return FitResult(update=self._flat.numpy() - params, num_examples=int(data.num_examples), metrics=metrics)

    def _head_start(self, head: np.ndarray) -> int | None:
        """The index of the first module of the head in a Sequential model, if the mask `head` is exactly
        the parameters of its trailing modules and its body holds no dropout or batch statistics."""
        nn = self.torch.nn
        if not isinstance(self.model, nn.Sequential) or self.spec.size != len(head) or not head.any():
            return None
        parts = [head[a:b] for a, b in self.spec.offsets()]
        if any(part.any() and not part.all() for part in parts):
            return None
        modules = [int(name.split(".")[0]) for name in self.spec.names]  # a Sequential's "2.weight"
        cut = min(m for m, part in zip(modules, parts) if part.all())
        if any((m >= cut) != bool(part.all()) for m, part in zip(modules, parts)):
            return None  # the head is not exactly the trailing modules
        if any(isinstance(m, (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._NormBase))
               for m in self.model[:cut].modules()):
            return None  # the body would compute other features in training than once, here
        return cut

    def evaluate(self, params: np.ndarray, x: np.ndarray, y: np.ndarray) -> EvalResult:
        """Summed loss and correct predictions of `params` on (x, y), in fixed-size batches."""
        torch = self.torch
        self.set_params(params)
        self.model.eval()
        result = EvalResult()
        with torch.inference_mode():
            model = self._inference_model(params, x)
            for i in range(0, len(x), self.eval_batch_size):
                xb = torch.from_numpy(np.ascontiguousarray(x[i:i + self.eval_batch_size]))
                yb = torch.from_numpy(np.ascontiguousarray(y[i:i + self.eval_batch_size]))
                out, yb = _predictions(model(xb), yb)
                if len(yb) == 0:
                    continue
                loss = float(self.loss_fn(out, yb, reduction="sum"))
                sums = {k: float(v) for k, v in self.metrics(out, yb).items()} if self.metrics else {}
                if self.task == "regression":
                    result = result + EvalResult(loss, None, len(yb), None, sums)
                    continue
                top3 = out.topk(min(3, out.shape[1]), dim=1).indices
                result = result + EvalResult(loss, int((out.argmax(1) == yb).sum()), len(yb),
                                             int((top3 == yb[:, None]).any(1).sum()), sums)
        return result

    def _inference_model(self, params: np.ndarray, x: np.ndarray):
        """The module to evaluate with; under jit_eval a frozen copy, rebuilt when params change — except for
        params evaluated once (`evaluated_once`), which are evaluated as they are.

        Freezing fuses layers and pre-packs weights: about twice as fast for convolutions on CPU, but tracing costs
        more than one small evaluation (~14 ms for the MLP). The choice depends on the task alone, never on what
        this trainer evaluated before, so every engine computes the same bits.
        """
        if not self.jit_eval or len(x) == 0 or EVALUATED_ONCE.get():
            return self.model
        if self._frozen is not None and np.array_equal(self._frozen[0], params):
            return self._frozen[1]
        torch = self.torch
        # TorchScript is deprecated in favour of torch.compile, which needs seconds of
        # compilation per process; for these small models TorchScript stays the fast path.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # LSTMs trace correctly, with warnings
            example = torch.from_numpy(np.ascontiguousarray(x[:1]))
            traced = torch.jit.trace(self.model, example, check_trace=False)
            self._frozen = (params.copy(), torch.jit.optimize_for_inference(torch.jit.freeze(traced)))
        return self._frozen[1]


def _predictions(out, y):
    """Logits [n, classes] and targets [n]: sequence outputs flattened, ignored (-1) targets dropped."""
    if out.dim() == 3:
        out, y = out.reshape(-1, out.shape[-1]), y.reshape(-1)
        keep = y >= 0
        if not bool(keep.all()):
            out, y = out[keep], y[keep]
    return out, y


class _PlainSGD:
    """SGD without momentum, as torch.optim.SGD computes it, without its ~2 s first-use import."""

    def __init__(self, params: list, lr: float):
        self.params, self.lr = params, lr
        self.param_groups = [{"params": params, "lr": lr}]  # how Opacus's DPOptimizer finds the parameters

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        for p in self.params:
            if p.grad is not None:
                p.data.add_(p.grad, alpha=-self.lr)
