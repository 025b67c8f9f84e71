"""Coded federated learning: straggler tolerance through redundancy (issue 22).

CodedFedL (Prakash et al. 2021, "Coded Computing for Low-Latency Federated Learning over Wireless Edge
Networks", IEEE JSAC; after Dhakal et al. 2019, "Coded Federated Learning"). Every client maps its inputs
through the same random Fourier features (Rahimi & Recht 2007: φ(x) = √(2/q)·cos(xω + b), ω ~ N(0, 2γ),
b ~ U[0, 2π), an RBF kernel exp(−γ‖x − x'‖²) approximated), so training is linear regression of one-hot
targets on φ(x), by full-batch gradient descent: the gradient of ½‖Xθ − Y‖² over a client's points is
Xᵀ(Xθ − Y).

Before training, client j sends once a parity set: X̃ⱼ = Gⱼ Wⱼ Xⱼ and Ỹⱼ = Gⱼ Wⱼ Yⱼ, with Gⱼ a u × ℓⱼ
matrix of N(0, 1/u) entries drawn on the device (E[GⱼᵀGⱼ] = I, E[GⱼᵀGₖ] = 0) and Wⱼ diagonal: √(1 − pⱼ)
on the ℓ̃ⱼ points the client will process each round (pⱼ: the chance its result arrives by the deadline),
1 on the points it never processes. The server sums the parity sets into one (X̃, Ỹ). Each round it waits
until the deadline t*, adds the gradients that arrived to the parity gradient X̃ᵀ(X̃θ − Ỹ) and steps by
their sum over m, all the clients' points. In expectation over arrivals and encodings the sum is
Σⱼ pⱼ·g(processed) + (1 − pⱼ)·g(processed) + g(never processed): the full gradient (`combined_gradient`).

The load allocation (`allocate`) gives each client the most points it can process by a deadline and
picks the earliest deadline at which the expected points returned, with the u parity rows the server
processes itself, cover all m points. On the simulated fleet a client's time is deterministic
(`DeviceProfile.task_seconds`) and it drops out with probability `dropout`; the allocation uses both.

Privacy: the parity set is a linear function of the raw (embedded) data, and Kumar et al. (2021, arXiv
2109.15226) show that such a scheme does not keep the privacy of ordinary federated learning: a server
that sees parity data learns more than from updates. `parity_noise` adds Gaussian noise of that standard
deviation to each parity entry on the device (the server subtracts the bias it adds to the parity
gradient, u·Σσ²·θ, so it costs variance), at a cost in accuracy; coded training is refused when the
server is not trusted (`privacy.trusted_server = false`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from .client import EvalResult, FitConfig, FitResult, Task, Trainer
from .errors import FedstackError
from .seeding import int_seed
from .strategy.base import ClientUpdate, Strategy


@dataclass(frozen=True)
class FourierFeatures:
    """φ(x) = √(2/q)·cos(x·ω + b) for flattened inputs x (Rahimi & Recht 2007)."""

    omega: np.ndarray  # d × q
    phase: np.ndarray  # q

    @classmethod
    def drawn(cls, inputs: int, features: int, gamma: float, map_seed: int) -> "FourierFeatures":
        """The map every party shares, drawn from `map_seed` (`map_seed_of`): ω ~ N(0, 2γ), b ~ U[0, 2π)."""
        draw = np.random.default_rng(map_seed)
        omega = draw.normal(0.0, math.sqrt(2 * gamma), (inputs, features)).astype(np.float32)
        return cls(omega, draw.uniform(0, 2 * math.pi, features).astype(np.float32))

    @property
    def features(self) -> int:
        return self.omega.shape[1]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        import torch

        flat = torch.from_numpy(np.ascontiguousarray(x.reshape(len(x), -1), np.float32))
        z = flat @ torch.from_numpy(self.omega) + torch.from_numpy(self.phase)
        return (math.sqrt(2.0 / self.features) * torch.cos(z)).numpy()


def map_seed_of(coded_map_seed: int, run_seed: int) -> int:
    """The feature map's seed: `coded.map_seed`, or one derived from the run seed (a one-way function of it,
    which a deployed server can send its devices without telling them the run seed)."""
    return coded_map_seed or int_seed(run_seed, "coded", 1)


MAX_PARITY_VALUES = 1 << 28  # a parity set a device agrees to build (1 GiB of float32)


@dataclass(frozen=True)
class ParityRequest:
    """What a client needs to encode its parity set: `rows` (u), `width` (q + c: the embedding's dimension
    plus the classes), its `load` (ℓ̃ⱼ, the points it processes each round: the first of its training
    split), `arrival` (pⱼ) and the device's `noise` std. Deployed, it travels in a task's JSON."""

    rows: int
    width: int
    load: int
    arrival: float
    noise: float = 0.0

    @property
    def size(self) -> int:
        """The values of the parity set that answers it: u × (q + c)."""
        return self.rows * self.width

    @classmethod
    def from_wire(cls, tree: dict) -> "ParityRequest":
        """A request as a task's JSON carries it, checked: FedstackError naming the field at fault."""
        if not isinstance(tree, dict) or set(tree) != {f for f in cls.__dataclass_fields__}:
            raise FedstackError(f"a parity request needs exactly the fields {sorted(cls.__dataclass_fields__)}")
        rows, width, load, arrival, noise = (tree[k] for k in ("rows", "width", "load", "arrival", "noise"))
        for key, value in (("rows", rows), ("width", width), ("load", load)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise FedstackError(f"parity request: {key} must be a whole number >= 0, not {value!r}")
        if rows * width > MAX_PARITY_VALUES or rows == 0 or width == 0:
            raise FedstackError(f"parity request: {rows} x {width} values, outside 1..{MAX_PARITY_VALUES}")
        for key, value, high in (("arrival", arrival, 1.0), ("noise", noise, math.inf)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= high \
                    or not math.isfinite(value):
                raise FedstackError(f"parity request: {key} must be a finite number in 0..{high:g}, not {value!r}")
        return cls(rows, width, load, float(arrival), float(noise))


def one_hot(y: np.ndarray, classes: int) -> np.ndarray:
    out = np.zeros((len(y), classes), np.float32)
    out[np.arange(len(y)), y] = 1.0
    return out


def encode_parity(x: np.ndarray, y: np.ndarray, request: ParityRequest, draw: np.random.Generator) -> np.ndarray:
    """A client's parity set [X̃ | Ỹ] (u × (q + c), flattened): G·W·[X | Y] with G ~ N(0, 1/u) drawn by
    `draw` and W = √(1 − p) on the first `load` rows (those the client processes), 1 on the rest."""
    if x.shape[1] + y.shape[1] != request.width:
        raise FedstackError(f"a parity request for {request.width} columns, but this model has "
                            f"{x.shape[1] + y.shape[1]} (features and classes)")
    weights = np.ones(len(x), np.float64)
    weights[:request.load] = math.sqrt(max(0.0, 1.0 - request.arrival))
    data = np.concatenate([x, y], axis=1).astype(np.float64) * weights[:, None]
    g = draw.normal(0.0, 1.0 / math.sqrt(request.rows), (request.rows, len(x)))
    parity = g @ data
    if request.noise:
        parity += draw.normal(0.0, request.noise, parity.shape)
    return parity.astype(np.float32).reshape(-1)


def gradient(theta: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Xᵀ(Xθ − Y): the gradient of ½‖Xθ − Y‖² (a sum over the rows)."""
    return (x.T.astype(np.float64) @ (x.astype(np.float64) @ theta - y)).astype(np.float64)


def combined_gradient(theta: np.ndarray, arrived: Iterable[np.ndarray], parity_x: np.ndarray | None,
                      parity_y: np.ndarray | None, noise_variance: float = 0.0) -> np.ndarray:
    """The server's gradient: the arrived clients' gradients plus the parity set's (none without parity).
    Noise of variance `noise_variance` in each entry of the summed parity (Σⱼ σⱼ²) adds u·σ²·θ to the parity
    gradient in expectation (E[NᵀN] = u·σ²·I): subtracted, so that noise costs variance, not bias."""
    total = np.zeros(theta.shape, np.float64)
    for g in arrived:
        total += g
    if parity_x is not None:
        total += gradient(theta, parity_x, parity_y) - len(parity_x) * noise_variance * theta
    return total


@dataclass(frozen=True)
class Allocation:
    """The deadline t* (0: wait for every client), each client's load ℓ̃ⱼ and the chance pⱼ its result
    arrives by t*, and the expected points returned."""

    deadline: float
    loads: tuple[int, ...]
    arrival: tuple[float, ...]
    expected_return: float


def allocate(sizes, seconds_per_point, fixed_seconds, stays, rows: int) -> Allocation:
    """CodedFedL's load allocation on a fleet whose times are known: by deadline t client j can process
    ℓⱼ(t) = min(sizes[j], ⌊(t − fixed_seconds[j]) / seconds_per_point[j]⌋) points (fixed: its download and
    upload), which arrive with probability stays[j] (1 − its dropout). t* is the earliest t at which the
    expected return Σ stays[j]·ℓⱼ(t) plus the `rows` parity points reach m = Σ sizes (or, if no t does, the
    time every client needs for all its points). Without parity rows there is no deadline: every client
    processes all its points and the server waits for all."""
    sizes = np.asarray(sizes, np.int64)
    per_point, fixed = np.asarray(seconds_per_point, np.float64), np.asarray(fixed_seconds, np.float64)
    stays = np.asarray(stays, np.float64)
    if rows <= 0:
        return Allocation(0.0, tuple(int(s) for s in sizes), tuple(float(s) for s in stays),
                          float((stays * sizes).sum()))

    def loads(t: float) -> np.ndarray:
        return np.clip(np.floor((t - fixed) / per_point + 1e-9), 0, sizes).astype(np.int64)

    target = sizes.sum() - rows
    everything = float((fixed + per_point * sizes).max())
    if (stays * sizes).sum() < target:  # not even every point processed covers it: wait for all
        t = everything
    else:
        low, high = 0.0, everything
        for _ in range(100):  # the expected return is a non-decreasing step function of t
            mid = (low + high) / 2
            if (stays * loads(mid)).sum() >= target:
                high = mid
            else:
                low = mid
        t = high
    chosen = loads(t)
    # a client with no load sends nothing: it cannot arrive, and the parity covers all its points
    arrival = tuple(float(s) if n else 0.0 for s, n in zip(stays, chosen))
    return Allocation(float(t), tuple(int(n) for n in chosen), arrival, float((stays * chosen).sum()))


REDUNDANCIES = (0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5)  # the fractions "auto" chooses among


def choose_rows(sizes, seconds_per_point, fixed_seconds, stays, parity_seconds_per_row, server_speed: float,
                rounds: int, fractions=REDUNDANCIES) -> tuple[int, Allocation, float]:
    """The parity rows (and their allocation) that finish `rounds` rounds soonest, by the fleet's figures:
    the parity upload first (the slowest client's u rows, `parity_seconds_per_row[j]` each), then each
    round the later of the deadline and the server's parity gradient (u / `server_speed`); without parity
    a round lasts until every client is done. More parity shortens the deadline but costs upload and server
    time: CodedFedL's trade-off, here searched over `fractions` of the data. (rows, allocation, seconds)."""
    sizes = np.asarray(sizes, np.int64)
    per_point, fixed = np.asarray(seconds_per_point, np.float64), np.asarray(fixed_seconds, np.float64)
    upload = np.asarray(parity_seconds_per_row, np.float64)
    best = None
    for fraction in fractions:
        rows = int(round(fraction * sizes.sum()))
        allocation = allocate(sizes, per_point, fixed, stays, rows)
        round_s = allocation.deadline if rows else float((fixed + per_point * sizes).max())
        total = (float(upload.max()) * rows if rows else 0.0) + rounds * max(round_s, rows / server_speed)
        if best is None or total < best[2] - 1e-9:
            best = (rows, allocation, total)
    return best


class RffTrainer(Trainer):
    """Linear regression of one-hot targets on random Fourier features, by full-batch gradient descent:
    a fit takes `local_steps` (or `epochs`) steps θ ← θ − lr·∇/n on the first `batch_size` points of the
    client's training split (all of them when it has fewer: CodedFedL's load ℓ̃ⱼ), and sends the change of
    θ. With `FitConfig.parity` it sends its parity set instead (`encode_parity`, drawn from the task's
    seed; a deployed device draws from the operating system: `on_device`). Evaluation: accuracy of argmax φ(x)θ and
    the squared error ½‖φ(x)θ − y‖² as the loss."""

    capabilities = frozenset({"parity"})

    def __init__(self, features: FourierFeatures, classes: int, seeded_parity: bool = True):
        self.map, self.classes, self.seeded_parity = features, classes, seeded_parity
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # the embedded inputs, by array

    def get_params(self) -> np.ndarray:
        return np.zeros(self.map.features * self.classes, np.float32)

    def on_device(self) -> None:
        """A device's encoding matrix is its own secret: from the operating system, never the seed."""
        self.seeded_parity = False

    def _embedded(self, x: np.ndarray) -> np.ndarray:
        """φ(x) of a whole data set, computed once per worker (clients index rows of the same array)."""
        key = id(x)
        kept = self._cache.get(key)
        if kept is None or kept[0] is not x:
            kept = self._cache[key] = (x, np.concatenate([self.map(x[i:i + 2000]) for i in range(0, len(x), 2000)])
                                       if len(x) else np.zeros((0, self.map.features), np.float32))
        return kept[1]

    def fit(self, params: np.ndarray, data: Any, config: FitConfig, state: Any = None) -> FitResult:
        features = self._embedded(data.x)
        idx = np.asarray(data.train_idx)
        if config.parity is not None:
            draw = np.random.default_rng(config.seed) if self.seeded_parity else np.random.default_rng()
            parity = encode_parity(features[idx], one_hot(data.y[idx], self.classes), config.parity, draw)
            return FitResult(parity, int(len(idx)), {"parity_rows": config.parity.rows})
        points = idx[:config.batch_size]
        x, y = features[points], one_hot(data.y[points], self.classes)
        theta = params.reshape(self.map.features, self.classes).astype(np.float64)
        start = theta.copy()
        steps = config.local_steps or config.epochs
        for _ in range(steps if len(points) else 0):
            theta -= config.lr * gradient(theta, x, y) / len(points)
        loss = 0.5 * float(((x @ start - y) ** 2).sum()) / max(1, len(points))
        return FitResult((theta - start).astype(np.float32).reshape(-1), int(len(points)),
                         {"train_loss": loss, "steps": steps})

    def evaluate(self, params: np.ndarray, x: np.ndarray, y: np.ndarray) -> EvalResult:
        features = self._embedded(x) if len(x) > 2000 else self.map(x)
        scores = features.astype(np.float64) @ params.reshape(self.map.features, self.classes)
        loss = 0.5 * float(((scores - one_hot(y, self.classes)) ** 2).sum())
        return EvalResult(loss_sum=loss, correct=int((scores.argmax(1) == y).sum()), examples=len(y))


@dataclass
class CodedServer(Strategy):
    """CodedFedL's server half (see the module docstring). `allocation` gives each client's load and the
    round's deadline; `rows` parity rows are gathered before round 1 (`prepare_tasks`, `prepared`), and
    each round's step is θ ← θ − lr·(Σ arrived gradients + parity gradient)/m, with m = `points`, every
    client's training points. Without parity (`rows` = 0, or the clients' gradients alone: a baseline)
    the step divides by the points that arrived. The parity gradient takes `server_seconds` a round: u
    rows at `server_speed` points per second, while the server waits for the clients."""

    allocation: Allocation
    classes: int
    points: int
    rows: int = 0
    lr: float = 1.0
    noise: float = 0.0
    server_speed: float = 10_000.0
    parity: np.ndarray | None = field(default=None, repr=False)  # Σⱼ [X̃ⱼ | Ỹⱼ], u × (q + c)
    senders: int = 0  # the parity sets summed (their noise adds up)

    stateful = True  # the parity set a checkpoint keeps
    needs_each_update = True  # each arrived gradient is scaled back from its client's step
    prepares = True

    def __post_init__(self):
        self._figures: dict = {}

    def client_needs(self) -> frozenset[str]:
        return frozenset({"parity"}) if self.rows else frozenset()

    def prepare_tasks(self, params: np.ndarray, ids: list[int], seed: int) -> list[Task]:
        """Round 0: each client encodes its parity set once (none without parity rows); in simulation its
        encoding matrix is drawn from the run seed's "coded" stream."""
        if not self.rows:
            return []
        return [Task(0, cid, FitConfig(local_steps=1, batch_size=1, lr=self.lr, seed=int_seed(seed, "coded", 2, cid),
                                       parity=ParityRequest(self.rows, self.prepared_size(params) // self.rows,
                                                            self.allocation.loads[cid],
                                                            self.allocation.arrival[cid], self.noise)))
                for cid in ids]

    def prepared_size(self, params: np.ndarray) -> int:
        """How many values a parity set holds: u × (q + c)."""
        return self.rows * (params.size // self.classes + self.classes)

    def prepared(self, parities: Iterable[np.ndarray]) -> None:
        """The parity sets that arrived, summed into the global one."""
        total, self.senders = np.zeros(0), 0
        for p in parities:
            total = p.astype(np.float64) if not total.size else total + p
            self.senders += 1
        self.parity = total.astype(np.float32) if total.size else None

    def prepared_figures(self) -> dict:
        """Each client's parity rows, the deadline and the expected points returned a round."""
        return {"parity_rows": self.rows, "coded_deadline_s": self.allocation.deadline,
                "coded_expected_return": self.allocation.expected_return, "coded_points": self.points}

    def configure(self, round: int, params: np.ndarray, sampled_ids: list[int]) -> list[Task]:
        loads = self.allocation.loads
        return [Task(round, cid, FitConfig(local_steps=1, batch_size=max(1, loads[cid]), lr=self.lr))
                for cid in sampled_ids if loads[cid] > 0]

    def aggregate(self, round: int, params: np.ndarray, updates: Iterable[ClientUpdate]) -> np.ndarray:
        theta = params.reshape(-1, self.classes).astype(np.float64)
        # a client's change is −lr·g/n after one step from θ, n its load: its gradient sum g = −change·n/lr.
        # (n is the load the server gave it, not the count it claims: a deployed claim may be bounded to 1.)
        arrived, points = [], 0
        for u in updates:
            n = self.allocation.loads[u.client_id]
            arrived.append(-u.update.reshape(theta.shape).astype(np.float64) * n / self.lr)
            points += n
        parity_x = parity_y = None
        if self.parity is not None:
            table = self.parity.reshape(self.rows, -1).astype(np.float64)
            parity_x, parity_y = table[:, :theta.shape[0]], table[:, theta.shape[0]:]
        total = combined_gradient(theta, arrived, parity_x, parity_y, self.senders * self.noise ** 2)
        denominator = self.points if self.parity is not None else points
        self._figures = {"coded_points_arrived": points}
        if not denominator:
            return params
        return (theta - self.lr * total / denominator).astype(np.float32).reshape(-1)

    def server_seconds(self, round: int) -> float:
        return self.rows / self.server_speed if self.parity is not None else 0.0

    def round_figures(self) -> dict:
        return dict(self._figures)

    def state(self) -> dict[str, np.ndarray]:
        return {} if self.parity is None else {"parity": self.parity.copy(), "senders": np.array(self.senders)}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        if "parity" in state:
            self.parity = state["parity"].copy()
            self.senders = int(state.get("senders", 0))


def check_parity(vector: np.ndarray, size: int) -> None:
    """A parity set as it arrives: its size, finite values (refused otherwise, like an update)."""
    if vector.size != size:
        raise FedstackError(f"a parity set of {vector.size} values, expected {size}")
    if not np.all(np.isfinite(vector)):
        raise FedstackError("a parity set with values that are not finite")
