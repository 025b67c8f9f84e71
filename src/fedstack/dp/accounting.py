"""Differential privacy accounting and the pure arithmetic of DP-FedAvg.

DP-FedAvg (McMahan et al. 2018, "Learning Differentially Private Recurrent Language Models", ICLR'18)
makes federated averaging differentially private at the level of a client (user): each round the
server samples clients, each sampled client clips its model update to L2 norm `clip_norm` (C), and
Gaussian noise of standard deviation `noise_multiplier` · C (z·C) is added to the sum of the clipped
updates. One round is then a subsampled Gaussian mechanism, and a run is their composition.

- `Accountant` tracks what a run has spent: ε at a fixed δ after the rounds so far, what ε would be
  after more rounds (so a server can stop before a budget is exceeded), and a checkpointable state.
  It uses Google's `dp_accounting`: the RDP accountant (Mironov 2017, "Rényi Differential Privacy",
  CSF'17; Mironov, Talwar & Zhang 2019, "Rényi Differential Privacy of the Sampled Gaussian
  Mechanism"; RDP is turned into (ε, δ) by Balle et al. 2020, "Hypothesis Testing Interpretations
  and Rényi Differential Privacy") or the tighter privacy loss distribution (PLD) accountant (Meiser
  & Mohammadi 2018, "Tight on Budget?"; Koskela, Jälkö & Honkela 2020, "Computing Tight Differential
  Privacy Guarantees Using FFT"; Doroshenko et al. 2022, "Connect the Dots: Tighter Discrete
  Approximations of Privacy Loss Distributions").
- `clip_by_l2` and `noise_std`: what a client clips and how much noise each party adds, for central
  DP, local DP and distributed DP under secure aggregation.
- `clip_update`, `noisy_fraction` and `update_noise_multiplier`: adaptive clipping, where C follows
  a quantile of the clients' update norms (Andrew, Thakkar, McMahan & Ramaswamy 2021,
  "Differentially Private Learning with Adaptive Clipping", NeurIPS'21).

All arithmetic is NumPy float64. Nothing here draws randomness of its own: callers pass a generator.
"""

from __future__ import annotations

import math

import numpy as np

KINDS = ("rdp", "pld")
SAMPLINGS = ("poisson", "fixed")
NOISE_MODES = ("central", "local", "distributed")


def _dp_accounting():
    # Imported on first use: clients need only the arithmetic below, and dp_accounting (with SciPy
    # and absl behind it) takes seconds to import.
    import logging

    from ..extras import require

    dp_accounting = require("dp_accounting", "privacy", "privacy accounting")

    # dp_accounting warns, every time ε is computed, about fractional RDP orders whose series does not
    # converge; it leaves them out, which only makes ε more conservative. One line per round per order
    # would bury a run's log, so only its errors are shown.
    logging.getLogger("absl").setLevel(logging.ERROR)
    return dp_accounting


class Accountant:
    """The privacy loss (ε at a fixed δ) of a DP-FedAvg run, composed round by round.

    `kind` is "rdp" (Rényi DP, over `orders`; dp_accounting's defaults when None) or "pld" (privacy
    loss distributions: tighter, slower). `sampling` says how each round chooses its clients, and
    with it which datasets count as neighbours:

    - "poisson": each of the `population` clients takes part independently with probability
      `sample_rate` (McMahan et al. 2018). Neighbours differ by adding or removing one client, whose
      clipped update moves the sum by at most C: z is the noise in units of the sensitivity.
    - "fixed": exactly `clients_per_round` clients drawn uniformly without replacement. The
      population size is then public, so neighbours differ by replacing one client (Wang, Balle &
      Kasiviswanathan 2019, "Subsampled Rényi Differential Privacy and Analytical Moments
      Accountant"); swapping one clipped update for another moves the sum by up to 2C, so the
      accountant composes a noise multiplier of z/2 (expect a far larger ε than under Poisson
      sampling at the same z). dp_accounting supports this only with RDP: `kind="pld"` with
      `sampling="fixed"` raises ValueError.

    A client is a user, so ε bounds what the run reveals about any one user's whole data
    (user-level DP). `delta` should be well below 1/population: McMahan et al. take 1/N^1.1.
    `noise_multiplier` is always z = (std of the noise on the sum) / C, as in `noise_std`. A round
    with z = 0 that samples anyone is not private: ε becomes infinite and stays so.
    """

    def __init__(self, kind: str = "rdp", sampling: str = "poisson", *, delta: float,
                 population: int | None = None, orders=None) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown accountant kind {kind!r} ({' | '.join(KINDS)})")
        if sampling not in SAMPLINGS:
            raise ValueError(f"unknown sampling {sampling!r} ({' | '.join(SAMPLINGS)})")
        if not 0.0 < delta < 1.0:
            raise ValueError(f"delta must be in (0, 1), not {delta}")
        if population is not None and (int(population) != population or population < 1):
            raise ValueError(f"population must be a positive integer, not {population}")
        if sampling == "fixed" and population is None:
            raise ValueError("fixed-size sampling needs the population size (population=...)")
        if kind == "pld" and orders is not None:
            raise ValueError("orders are for the RDP accountant; the PLD accountant has none")
        self.kind = kind
        self.sampling = sampling
        self.delta = float(delta)
        self.population = None if population is None else int(population)
        if kind == "rdp":
            default = _dp_accounting().rdp.rdp_privacy_accountant.DEFAULT_RDP_ORDERS
            self.orders = np.array(default if orders is None else orders, dtype=np.float64)
        else:
            self.orders = np.zeros(0, dtype=np.float64)
        # The run as runs of identical rounds, (noise_multiplier, sample_rate, count): replaying
        # them rebuilds the accounting exactly, so this list is the whole state.
        self._events: list[tuple[float, float, int]] = []
        self._epsilon: float | None = None  # cache of epsilon(); cleared whenever a round is added
        probe = self._dp_event(1.0, 1.0 / self.population if sampling == "fixed" else 0.5)
        if not self._new_dp_accountant().supports(probe):
            raise ValueError(f"dp_accounting's {kind.upper()} accountant does not support {sampling} sampling "
                             f"({type(probe).__name__}); use kind='rdp' for sampling='fixed'")

    @property
    def rounds(self) -> int:
        """How many rounds have been accounted for."""
        return sum(count for _, _, count in self._events)

    def step(self, noise_multiplier: float, sample_rate: float | None = None, *,
             clients_per_round: float | None = None, count: int = 1) -> None:
        """Account for `count` rounds of noise `noise_multiplier` over clients sampled at `sample_rate`.

        Give either `sample_rate` (q, the chance a client takes part) or `clients_per_round`
        (expected under Poisson sampling, exact under fixed-size sampling), which is
        `sample_rate` · `population`.
        """
        if int(count) != count or count < 1:
            raise ValueError(f"count must be a positive integer, not {count}")
        event = self._round(noise_multiplier, sample_rate, clients_per_round)
        if self._events and self._events[-1][:2] == event:
            self._events[-1] = (*event, self._events[-1][2] + int(count))
        else:
            self._events.append((*event, int(count)))
        self._epsilon = None

    def epsilon(self) -> float:
        """ε such that the rounds so far are (ε, δ)-differentially private at the configured δ."""
        if self._epsilon is None:
            self._epsilon = self._epsilon_of(self._events)
        return self._epsilon

    def epsilon_after(self, extra_rounds: int, noise_multiplier: float | None = None,
                      sample_rate: float | None = None, *, clients_per_round: float | None = None) -> float:
        """What `epsilon()` would be after `extra_rounds` more rounds; the accountant is left unchanged.

        The extra rounds repeat the last round's noise and sampling unless told otherwise.
        """
        if int(extra_rounds) != extra_rounds or extra_rounds < 0:
            raise ValueError(f"extra_rounds must be a non-negative integer, not {extra_rounds}")
        if extra_rounds == 0:
            return self.epsilon()
        if noise_multiplier is None or (sample_rate is None and clients_per_round is None):
            if not self._events:
                raise ValueError("no round accounted yet: give the extra rounds' noise_multiplier and sample_rate")
            last_noise, last_rate, _ = self._events[-1]
            noise_multiplier = last_noise if noise_multiplier is None else noise_multiplier
            if sample_rate is None and clients_per_round is None:
                sample_rate = last_rate
        event = self._round(noise_multiplier, sample_rate, clients_per_round)
        return self._epsilon_of([*self._events, (*event, int(extra_rounds))])

    def rdp(self) -> tuple[np.ndarray, np.ndarray]:
        """The Rényi DP curve of the rounds so far: (orders, ε_RDP at each order), for the RDP accountant.

        For reports, or to convert to (ε, δ) another way (the classic conversion of Mironov 2017,
        Proposition 3, is min over orders α of ε_RDP(α) + log(1/δ) / (α − 1)).
        """
        if self.kind != "rdp":
            raise ValueError("only the RDP accountant has an RDP curve")
        private = [event for event in self._events if event[1] > 0]  # as in epsilon()
        if any(noise == 0 for noise, _, _ in private):
            return self.orders.copy(), np.full_like(self.orders, np.inf)
        if not private:
            return self.orders.copy(), np.zeros_like(self.orders)
        return self.orders.copy(), np.array(self._composed(private).rdp, dtype=np.float64)

    def state(self) -> dict[str, np.ndarray]:
        """Everything needed to resume the accounting exactly (`load_state`), as NumPy arrays."""
        return {
            "kind": np.array(self.kind),
            "sampling": np.array(self.sampling),
            "population": np.array(self.population or 0, dtype=np.int64),  # 0: not given
            "delta": np.array(self.delta, dtype=np.float64),
            "orders": self.orders.copy(),
            "noise_multipliers": np.array([e[0] for e in self._events], dtype=np.float64),
            "sample_rates": np.array([e[1] for e in self._events], dtype=np.float64),
            "counts": np.array([e[2] for e in self._events], dtype=np.int64),
        }

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        """Resume from what `state()` returned; a ValueError, changing nothing, if it is not this accountant's."""
        missing = [name for name in self.state() if name not in state]
        if missing:
            raise ValueError(f"accountant state lacks {', '.join(missing)}")
        # A resumed run accounted under other settings would report a wrong ε without any error.
        mine = self.state()
        for name in ("kind", "sampling", "population", "delta", "orders"):
            theirs = np.asarray(state[name])
            if theirs.shape != mine[name].shape or not np.array_equal(theirs, mine[name]):
                raise ValueError(f"accountant state has {name}={theirs.tolist()!r}, this accountant "
                                 f"{mine[name].tolist()!r}")
        noises = np.asarray(state["noise_multipliers"], dtype=np.float64)
        rates = np.asarray(state["sample_rates"], dtype=np.float64)
        counts = np.asarray(state["counts"], dtype=np.int64)
        if not (noises.ndim == 1 and noises.shape == rates.shape == counts.shape):
            raise ValueError("accountant state: noise_multipliers, sample_rates and counts must be 1-D and as long")
        if not (np.all(noises >= 0) and np.all(np.isfinite(noises)) and np.all((rates >= 0) & (rates <= 1))
                and np.all(counts >= 1)):
            raise ValueError("accountant state holds an invalid round (negative noise, rate outside [0, 1], count < 1)")
        self._events = [(float(z), float(q), int(n)) for z, q, n in zip(noises, rates, counts)]
        self._epsilon = None

    # -- helpers ---------------------------------------------------------------------------------

    def _round(self, noise_multiplier, sample_rate, clients_per_round) -> tuple[float, float]:
        """(noise_multiplier, sample_rate) of one round, checked."""
        noise_multiplier = float(noise_multiplier)
        if not (noise_multiplier >= 0 and math.isfinite(noise_multiplier)):
            raise ValueError(f"noise_multiplier must be finite and non-negative, not {noise_multiplier}")
        if (sample_rate is None) == (clients_per_round is None):
            raise ValueError("give exactly one of sample_rate and clients_per_round")
        if clients_per_round is not None:
            if self.population is None:
                raise ValueError("clients_per_round needs the population size (Accountant(population=...))")
            if not 0 <= clients_per_round <= self.population:
                raise ValueError(f"clients_per_round must be in [0, {self.population}], not {clients_per_round}")
            if self.sampling == "fixed" and int(clients_per_round) != clients_per_round:
                raise ValueError(f"fixed-size sampling takes a whole number of clients, not {clients_per_round}")
            return noise_multiplier, float(clients_per_round) / self.population
        sample_rate = float(sample_rate)
        if not 0.0 <= sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be in [0, 1], not {sample_rate}")
        if self.sampling == "fixed":
            clients = sample_rate * self.population
            if abs(clients - round(clients)) > 1e-9 * max(1.0, clients):
                raise ValueError(f"fixed-size sampling: sample_rate {sample_rate} of {self.population} clients is "
                                 f"not a whole number of clients")
            return noise_multiplier, round(clients) / self.population
        return noise_multiplier, sample_rate

    def _dp_event(self, noise_multiplier: float, sample_rate: float):
        """The dp_accounting event of one round."""
        dp = _dp_accounting()
        if self.sampling == "poisson":
            return dp.PoissonSampledDpEvent(sample_rate, dp.GaussianDpEvent(noise_multiplier))
        # Replace-one sensitivity of the sum is 2C: the noise is z/2 of it (see the class docstring).
        return dp.SampledWithoutReplacementDpEvent(self.population, round(sample_rate * self.population),
                                                   dp.GaussianDpEvent(noise_multiplier / 2.0))

    def _new_dp_accountant(self):
        dp = _dp_accounting()
        relation = (dp.NeighboringRelation.ADD_OR_REMOVE_ONE if self.sampling == "poisson"
                    else dp.NeighboringRelation.REPLACE_ONE)
        if self.kind == "rdp":
            return dp.rdp.RdpAccountant(orders=list(self.orders), neighboring_relation=relation)
        return dp.pld.PLDAccountant(neighboring_relation=relation)

    def _composed(self, events):
        accountant = self._new_dp_accountant()
        for noise, rate, count in events:
            accountant.compose(self._dp_event(noise, rate), count)
        return accountant

    def _epsilon_of(self, events) -> float:
        # A round that samples nobody releases only noise: it costs nothing (and dp_accounting
        # cannot build a sampling-without-replacement event of size 0).
        private = [event for event in events if event[1] > 0]
        if not private:
            return 0.0
        # Without noise the sum of updates is released as is: no finite ε. Said here rather than
        # left to dp_accounting, whose sampling-without-replacement formula would divide by zero.
        if any(noise == 0 for noise, _, _ in private):
            return math.inf
        return float(self._composed(private).get_epsilon(self.delta))


def l2_norm(vector) -> float:
    """The L2 norm of all entries of `vector`, in float64, without overflow or underflow on the way."""
    v = np.asarray(vector, dtype=np.float64)
    largest = float(np.max(np.abs(v))) if v.size else 0.0
    if largest == 0.0 or not math.isfinite(largest):
        return largest
    # Squaring entries beyond 1e154 overflows and below 1e-162 underflows: square them scaled to 1.
    return largest * float(np.linalg.norm(v / largest))


# Clipped vectors land this far (relatively) inside the ball: ways of summing squares (NumPy's
# pairwise sum, math.hypot, a GPU reduction) differ in the last bits, and the sensitivity bound must
# hold whichever one checks it.
_CLIP_MARGIN = 1e-12


def clip_by_l2(vector, clip_norm: float) -> tuple[np.ndarray, bool]:
    """`vector` (float64) scaled down to L2 norm at most `clip_norm`, and whether it had to be.

    A vector already inside the ball comes back unchanged; one outside keeps its direction and
    lands just inside, within a relative 1e-12 of `clip_norm`; `clip_norm` 0 turns any non-zero
    vector into zeros. The per-client clipping of DP-FedAvg (McMahan et al. 2018, Algorithm 1),
    which bounds one client's influence on the sum by `clip_norm`.
    """
    clip_norm = float(clip_norm)
    if not (clip_norm >= 0 and math.isfinite(clip_norm)):
        raise ValueError(f"clip_norm must be finite and non-negative, not {clip_norm}")
    v = np.array(vector, dtype=np.float64)
    if not np.all(np.isfinite(v)):
        raise ValueError("cannot clip a vector with NaN or infinite entries")
    if l2_norm(v) <= clip_norm:
        return v, False
    # Outside the ball, so v is not zero: dividing by its largest entry, then by the norm of the
    # result (between 1 and √size), divides by nothing near zero and overflows nothing.
    scaled = v / float(np.max(np.abs(v)))
    target = clip_norm * (1.0 - _CLIP_MARGIN)
    factor = target / float(np.linalg.norm(scaled))
    clipped = scaled * factor
    # Rounding can still leave it a few ulps long: shrink, faster each time, until it is inside
    # (at worst at the zero vector).
    shrink = np.finfo(np.float64).eps
    while l2_norm(clipped) > target:
        factor *= max(0.0, 1.0 - shrink)
        shrink *= 2.0
        clipped = scaled * factor
    return clipped, True


def noise_std(noise_multiplier: float, clip_norm: float, mode: str = "central",
              num_clients: int | None = None) -> float:
    """The standard deviation of the Gaussian noise that each noising party adds, for noise multiplier z and clip C.

    - "central": the server adds z·C once to the sum of the clipped updates (McMahan et al. 2018).
    - "local": every client adds z·C to its own clipped update, so each update is private on its own
      even against the server; the sum then carries √n times the central noise.
    - "distributed": each of `num_clients` (n) clients adds z·C/√n, so that the sum, which under
      secure aggregation is all the server sees, carries z·C as in the central case (Kairouz, Liu &
      Steinke 2021, "The Distributed Discrete Gaussian Mechanism for Federated Learning with Secure
      Aggregation"). Clients that drop out take their share with them: choose n as the fewest clients
      expected to survive the round, not the number asked.
    """
    noise_multiplier, clip_norm = float(noise_multiplier), float(clip_norm)
    if not (noise_multiplier >= 0 and math.isfinite(noise_multiplier)):
        raise ValueError(f"noise_multiplier must be finite and non-negative, not {noise_multiplier}")
    if not (clip_norm >= 0 and math.isfinite(clip_norm)):
        raise ValueError(f"clip_norm must be finite and non-negative, not {clip_norm}")
    if mode not in NOISE_MODES:
        raise ValueError(f"unknown noise mode {mode!r} ({' | '.join(NOISE_MODES)})")
    if mode != "distributed":
        return noise_multiplier * clip_norm
    if num_clients is None or int(num_clients) != num_clients or num_clients < 1:
        raise ValueError(f"distributed noise needs num_clients, a positive integer, not {num_clients}")
    return noise_multiplier * clip_norm / math.sqrt(num_clients)


def clip_update(clip_norm: float, noisy_fraction_below: float, target_quantile: float, learning_rate: float) -> float:
    """The next round's clip norm: C · exp(−η (b̄ − γ)), the geometric update of adaptive clipping.

    b̄ (`noisy_fraction_below`) is the privatised fraction of clients whose update norm was at most
    C (`noisy_fraction`), γ the `target_quantile` of update norms that C should track, η the
    `learning_rate` (the paper suggests 0.2). Too many updates inside the ball (b̄ > γ) shrink C,
    too few grow it (Andrew et al. 2021, Section 2).
    """
    clip_norm, fraction = float(clip_norm), float(noisy_fraction_below)
    if not (clip_norm >= 0 and math.isfinite(clip_norm)):
        raise ValueError(f"clip_norm must be finite and non-negative, not {clip_norm}")
    if not 0.0 <= target_quantile <= 1.0:
        raise ValueError(f"target_quantile must be in [0, 1], not {target_quantile}")
    if not (learning_rate >= 0 and math.isfinite(learning_rate)):
        raise ValueError(f"learning_rate must be finite and non-negative, not {learning_rate}")
    if not math.isfinite(fraction):
        raise ValueError(f"noisy_fraction_below must be finite, not {fraction}")
    return clip_norm * math.exp(-learning_rate * (fraction - target_quantile))


def noisy_fraction(bits, noise_std_bits: float, rng: np.random.Generator, expected_clients: float) -> float:
    """The differentially private fraction of clients whose update norm was within the clip: b̄.

    `bits` holds one 0/1 per client that reported (1: its norm was at most C). Their sum gets one
    Gaussian draw of std σ_b (`noise_std_bits`, the paper suggests `expected_clients` / 20) from
    `rng`, and is divided by the expected number of clients, not the number that reported: under
    Poisson sampling that count is itself private (Andrew et al. 2021, Algorithm 1). b̄ may fall
    outside [0, 1]; `clip_update` takes it as it is.
    """
    bits = np.asarray(bits, dtype=np.float64)
    if not np.all((bits == 0) | (bits == 1)):
        raise ValueError("bits must all be 0 or 1")
    noise_std_bits = float(noise_std_bits)
    if not (noise_std_bits >= 0 and math.isfinite(noise_std_bits)):
        raise ValueError(f"noise_std_bits must be finite and non-negative, not {noise_std_bits}")
    if not expected_clients > 0:
        raise ValueError(f"expected_clients must be positive, not {expected_clients}")
    return (float(bits.sum()) + float(rng.normal(0.0, noise_std_bits))) / float(expected_clients)


def update_noise_multiplier(total_noise_multiplier: float, bits_noise_std: float) -> float:
    """The noise multiplier z_Δ for the updates, so that updates and clipped count together cost one Gaussian of z.

    Adaptive clipping releases two Gaussian queries per round: the sum of the clipped updates
    (sensitivity C, noise multiplier z_Δ) and the count of unclipped clients, whose bits are
    centred to ±1/2 (sensitivity 1/2: noise σ_b is a noise multiplier of 2σ_b). Two Gaussian
    mechanisms compose like one whose z⁻² is the sum of theirs, so z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2)
    (Andrew et al. 2021, Theorem 1). The accountant then steps with z, not z_Δ. A ValueError when
    σ_b ≤ z/2: the count alone would spend the whole budget.
    """
    z, sigma_b = float(total_noise_multiplier), float(bits_noise_std)
    if not (z >= 0 and math.isfinite(z)):
        raise ValueError(f"total_noise_multiplier must be finite and non-negative, not {z}")
    if not sigma_b >= 0:
        raise ValueError(f"bits_noise_std must be non-negative, not {sigma_b}")
    if z == 0:
        return 0.0  # no privacy asked for: no noise needed on the updates either
    if 2.0 * sigma_b <= z:
        raise ValueError(f"bits_noise_std {sigma_b} is too small for total_noise_multiplier {z}: the clipped-count "
                         f"query alone would cost more than the whole budget (it needs bits_noise_std > {z / 2})")
    # z / √(1 − (z / 2σ_b)²) is the same number, without overflowing z⁻² for tiny z.
    return z / math.sqrt(1.0 - (z / (2.0 * sigma_b)) ** 2)


class RecordLevelLedger:
    """Record-level DP of each client under DP-SGD: every client's own ε, at a fixed δ, across rounds.

    With `client.dp_sgd`, each client trains with DP-SGD (Abadi et al. 2016, "Deep Learning with
    Differential Privacy", CCS'16; through Opacus, Yousefpour et al. 2021): every local step clips
    each example's gradient to C and adds Gaussian noise of std z·C to their sum, so a step is a
    subsampled Gaussian mechanism over that client's records, and all the steps the client ever took
    (in every round it trained) compose into its ε. Neighbouring datasets differ by adding or
    removing one record of that client (an organisation such as a hospital protects its patients,
    not its own participation): unlike `Accountant`'s user-level ε, this is one ε per client.

    The ledger keeps dense arrays over the `num_clients` clients: the DP-SGD steps each has taken,
    and the noise multiplier z and sample rate q (batch size / training examples) those steps ran
    with. ε is computed by an RDP `Accountant` with Poisson sampling at q for that many steps;
    clients with equal (z, q, steps) share one computation. A client's steps must all have one
    (z, q): `add` refuses a change, which this summary could not account for.

    Our batches are shuffled fixed-size batches (`client.batch_order`), not Poisson samples, so the
    Poisson-amplified ε is the usual approximation, the one Opacus reports when its data loader
    does not sample with Poisson; it is not a proof for shuffled batches, whose true ε can be larger
    (Chua et al. 2024, "How Private are DP-SGD Implementations?"). The analysis also takes each
    client's number of records as public (its sample rate, steps and `num_examples` reveal it), and
    assumes DP-SGD's update is all the client releases from its records.
    """

    def __init__(self, num_clients: int, *, delta: float, orders=None) -> None:
        if int(num_clients) != num_clients or num_clients < 1:
            raise ValueError(f"num_clients must be a positive integer, not {num_clients}")
        self.num_clients = int(num_clients)
        # Checks delta and orders, and fixes the orders every ε of this ledger is computed over.
        self.orders = Accountant("rdp", "poisson", delta=delta, orders=orders).orders
        self.delta = float(delta)
        self.steps = np.zeros(self.num_clients, dtype=np.int64)
        self.sample_rates = np.zeros(self.num_clients, dtype=np.float64)
        self.noise_multipliers = np.zeros(self.num_clients, dtype=np.float64)
        self._cache: dict[tuple[float, float, int], float] = {}  # (z, q, steps) -> ε

    def add(self, client_id: int, steps: int, sample_rate: float, noise_multiplier: float) -> None:
        """Account for `steps` more DP-SGD steps of client `client_id` (a fit's `dp_steps` and `dp_sample_rate`)."""
        client_id = self._client(client_id)
        if int(steps) != steps or steps < 0:
            raise ValueError(f"steps must be a non-negative integer, not {steps}")
        rate, noise = float(sample_rate), float(noise_multiplier)
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"sample_rate must be in [0, 1], not {sample_rate}")
        if not (noise >= 0 and math.isfinite(noise)):
            raise ValueError(f"noise_multiplier must be finite and non-negative, not {noise_multiplier}")
        if steps == 0:
            return
        if self.steps[client_id] > 0:
            known = (float(self.noise_multipliers[client_id]), float(self.sample_rates[client_id]))
            if not (math.isclose(noise, known[0], rel_tol=1e-9) and math.isclose(rate, known[1], rel_tol=1e-9)):
                raise ValueError(f"client {client_id} took its DP-SGD steps at noise multiplier {known[0]} and "
                                 f"sample rate {known[1]}, not {noise} and {rate}: the ledger composes one kind "
                                 f"of step per client")
        else:
            self.noise_multipliers[client_id], self.sample_rates[client_id] = noise, rate
        self.steps[client_id] += int(steps)

    def epsilon(self, client_id: int) -> float:
        """ε such that client `client_id`'s DP-SGD steps so far are (ε, δ)-DP for its records (0 before any)."""
        client_id = self._client(client_id)
        steps = int(self.steps[client_id])
        if steps == 0:
            return 0.0
        key = (float(self.noise_multipliers[client_id]), float(self.sample_rates[client_id]), steps)
        if key not in self._cache:
            accountant = Accountant("rdp", "poisson", delta=self.delta, orders=self.orders)
            accountant.step(key[0], key[1], count=steps)
            self._cache[key] = accountant.epsilon()
        return self._cache[key]

    def epsilons(self, ids=None) -> np.ndarray:
        """ε of each client in `ids` (every client when None), as float64."""
        ids = range(self.num_clients) if ids is None else ids
        return np.array([self.epsilon(i) for i in ids], dtype=np.float64)

    def state(self) -> dict[str, np.ndarray]:
        """Everything needed to resume the ledger exactly (`load_state`), as NumPy arrays."""
        return {
            "delta": np.array(self.delta, dtype=np.float64),
            "orders": self.orders.copy(),
            "steps": self.steps.copy(),
            "sample_rates": self.sample_rates.copy(),
            "noise_multipliers": self.noise_multipliers.copy(),
        }

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        """Resume from what `state()` returned; a ValueError, changing nothing, if it is not this ledger's."""
        missing = [name for name in self.state() if name not in state]
        if missing:
            raise ValueError(f"ledger state lacks {', '.join(missing)}")
        for name, mine in (("delta", np.array(self.delta)), ("orders", self.orders)):
            theirs = np.asarray(state[name])
            if theirs.shape != mine.shape or not np.array_equal(theirs, mine):
                raise ValueError(f"ledger state has {name}={theirs.tolist()!r}, this ledger {mine.tolist()!r}")
        steps = np.asarray(state["steps"])
        rates = np.asarray(state["sample_rates"], dtype=np.float64)
        noises = np.asarray(state["noise_multipliers"], dtype=np.float64)
        if not steps.shape == rates.shape == noises.shape == (self.num_clients,):
            raise ValueError(f"ledger state: steps, sample_rates and noise_multipliers must have shape "
                             f"({self.num_clients},)")
        if not (np.all(steps >= 0) and np.all(steps == np.round(steps)) and np.all((rates >= 0) & (rates <= 1))
                and np.all(noises >= 0) and np.all(np.isfinite(noises))):
            raise ValueError("ledger state holds invalid entries (negative or fractional steps, rate outside "
                             "[0, 1], negative or infinite noise)")
        self.steps = steps.astype(np.int64)
        self.sample_rates, self.noise_multipliers = rates.copy(), noises.copy()

    def _client(self, client_id) -> int:
        if int(client_id) != client_id or not 0 <= client_id < self.num_clients:
            raise ValueError(f"client_id must be an integer in [0, {self.num_clients}), not {client_id}")
        return int(client_id)
