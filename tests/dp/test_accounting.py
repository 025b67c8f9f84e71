import io
import math
from statistics import NormalDist

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import dp_accounting
from fedstack.dp.accounting import (Accountant, clip_by_l2, clip_update, l2_norm, noise_std, noisy_fraction,
                              update_noise_multiplier)

DELTA = 1e-5


def rdp_epsilon(noise_multiplier, sample_rate, rounds, **kwargs):
    accountant = Accountant("rdp", delta=kwargs.pop("delta", DELTA), **kwargs)
    accountant.step(noise_multiplier, sample_rate, count=rounds)
    return accountant.epsilon()


# -- the accountant against other implementations and published numbers -------------------------

# Realistic settings (ε from about 0.8 to 4). Far outside them the two libraries part a little:
# at z=0.6, q=0.05, 500 rounds (ε ≈ 27) dp_accounting bounds the fractional orders more
# conservatively than Opacus and reports an ε 1.7% higher.
@pytest.mark.parametrize("noise_multiplier, sample_rate, rounds", [
    (1.1, 256 / 60000, 2000), (0.8, 0.01, 100), (2.0, 0.1, 50), (1.0, 0.001, 10000), (0.7, 0.02, 300)])
def test_rdp_epsilon_matches_opacus_with_the_same_orders(noise_multiplier, sample_rate, rounds):
    from opacus.accountants import RDPAccountant

    opacus = RDPAccountant()
    for _ in range(rounds):
        opacus.step(noise_multiplier=noise_multiplier, sample_rate=sample_rate)
    expected = opacus.get_epsilon(delta=DELTA, alphas=RDPAccountant.DEFAULT_ALPHAS)
    mine = rdp_epsilon(noise_multiplier, sample_rate, rounds, orders=RDPAccountant.DEFAULT_ALPHAS)
    assert mine == pytest.approx(expected, rel=0.01)


# TensorFlow Privacy's MNIST DP-SGD tutorial (tensorflow/privacy, tutorials/README.md at commit
# 047e1eef0e446daf41a9adbb712c546ebbd38c12, "Expected Output" and "Select Parameters"; the script is
# tutorials/mnist_dpsgd_tutorial.py, commit 01ab549902200724d9b2288817325b70a1b1e09f): 60000 examples,
# batches of 256 (q = 256/60000, 60000 // 256 = 234 steps an epoch), δ = 1e-5, the orders below, and
# the classic RDP → (ε, δ) conversion of Mironov 2017, Prop. 3: ε = min over α of RDP(α) + log(1/δ)/(α−1).
TUTORIAL_ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))


@pytest.mark.parametrize("noise_multiplier, epochs, published", [
    (1.12, 60, 2.92), (0.6, 30, 9.74), (1.2, 10, 1.20), (1.12, 1, 1.00), (1.12, 2, 1.04)])
def test_rdp_curve_reproduces_tensorflow_privacy_mnist_tutorial(noise_multiplier, epochs, published):
    accountant = Accountant("rdp", delta=1e-5, orders=TUTORIAL_ORDERS)
    accountant.step(noise_multiplier, 256 / 60000, count=epochs * (60000 // 256))
    orders, rdp = accountant.rdp()
    classic = float(np.min(rdp + math.log(1 / 1e-5) / (orders - 1)))
    assert classic == pytest.approx(published, rel=0.01)
    # epsilon() uses the tighter conversion of dp_accounting (Balle et al. 2020): never above it.
    assert accountant.epsilon() <= classic


@pytest.mark.parametrize("noise_multiplier, sample_rate, rounds", [(1.0, 0.01, 1000), (1.1, 256 / 60000, 2000)])
def test_pld_is_tighter_than_rdp_but_close(noise_multiplier, sample_rate, rounds):
    rdp = rdp_epsilon(noise_multiplier, sample_rate, rounds)
    pld = Accountant("pld", delta=DELTA)
    pld.step(noise_multiplier, sample_rate, count=rounds)
    assert 0.6 * rdp <= pld.epsilon() <= rdp


def test_fixed_size_sampling_accounts_replace_one_with_twice_the_sensitivity():
    # Everyone sampled: no amplification, a Gaussian mechanism with sensitivity 2C under replace-one,
    # so noise z·C is worth what noise z/2 is under add/remove-one.
    everyone = Accountant("rdp", "fixed", delta=DELTA, population=1000)
    everyone.step(1.0, clients_per_round=1000, count=10)
    assert everyone.epsilon() == pytest.approx(rdp_epsilon(0.5, 1.0, 10), rel=1e-12)
    # Sampling 10 of 1000 amplifies privacy, as sample_rate=0.01 says the same thing.
    sampled = Accountant("rdp", "fixed", delta=DELTA, population=1000)
    sampled.step(1.0, clients_per_round=10, count=10)
    by_rate = Accountant("rdp", "fixed", delta=DELTA, population=1000)
    by_rate.step(1.0, 0.01, count=10)
    assert sampled.epsilon() == by_rate.epsilon() < everyone.epsilon()
    with pytest.raises(ValueError, match="whole number"):
        by_rate.step(1.0, 0.0105)
    with pytest.raises(ValueError, match="kind='rdp'"):
        Accountant("pld", "fixed", delta=DELTA, population=1000)


def test_clients_per_round_under_poisson_is_the_expected_rate():
    by_clients = Accountant(delta=DELTA, population=10_000)
    by_clients.step(1.0, clients_per_round=100, count=50)
    assert by_clients.epsilon() == rdp_epsilon(1.0, 0.01, 50)
    with pytest.raises(ValueError, match="population"):
        Accountant(delta=DELTA).step(1.0, clients_per_round=100)
    with pytest.raises(ValueError, match="exactly one"):
        by_clients.step(1.0, 0.01, clients_per_round=100)


# -- the accountant's behaviour ------------------------------------------------------------------

def test_epsilon_grows_with_rounds_and_falls_with_noise():
    accountant = Accountant(delta=DELTA)
    assert accountant.epsilon() == 0.0
    spent = []
    for rounds in (1, 9, 90, 900):
        accountant.step(1.0, 0.01, count=rounds)
        spent.append(accountant.epsilon())
    assert accountant.rounds == 1000
    assert all(a < b for a, b in zip(spent, spent[1:]))
    by_noise = [rdp_epsilon(z, 0.01, 100) for z in (0.5, 1.0, 2.0, 4.0)]
    assert all(a > b for a, b in zip(by_noise, by_noise[1:]))


@pytest.mark.parametrize("kind, sampling", [("rdp", "poisson"), ("pld", "poisson"), ("rdp", "fixed")])
def test_no_noise_means_infinite_epsilon(kind, sampling):
    accountant = Accountant(kind, sampling, delta=DELTA, population=100)
    accountant.step(1.0, 0.1, count=5)
    assert math.isfinite(accountant.epsilon())
    assert accountant.epsilon_after(1, noise_multiplier=0.0) == math.inf
    accountant.step(0.0, 0.1)
    assert accountant.epsilon() == math.inf
    accountant.step(1.0, 0.1)
    assert accountant.epsilon() == math.inf  # once revealed, always revealed
    if kind == "rdp":
        assert np.all(np.isinf(accountant.rdp()[1]))


def test_a_round_that_samples_nobody_costs_nothing():
    accountant = Accountant(delta=DELTA)
    accountant.step(0.0, 0.0, count=3)
    assert accountant.epsilon() == 0.0


def test_epsilon_after_predicts_without_changing_the_state():
    accountant = Accountant(delta=DELTA)
    accountant.step(1.0, 0.01, count=100)
    before, state = accountant.epsilon(), accountant.state()
    predicted = accountant.epsilon_after(50)
    predicted_other = accountant.epsilon_after(50, noise_multiplier=2.0, sample_rate=0.02)
    assert accountant.epsilon() == before and accountant.rounds == 100
    assert all(np.array_equal(state[k], v) for k, v in accountant.state().items())
    assert accountant.epsilon_after(0) == before
    assert before < predicted
    accountant.step(1.0, 0.01, count=50)
    assert accountant.epsilon() == pytest.approx(predicted, rel=1e-12)
    other = Accountant(delta=DELTA)
    other.step(1.0, 0.01, count=100)
    other.step(2.0, 0.02, count=50)
    assert other.epsilon() == pytest.approx(predicted_other, rel=1e-12)
    with pytest.raises(ValueError, match="no round"):
        Accountant(delta=DELTA).epsilon_after(5)


@pytest.mark.parametrize("kind", ["rdp", "pld"])
def test_state_round_trips_through_a_checkpoint(kind):
    accountant = Accountant(kind, delta=DELTA, population=1000)
    accountant.step(1.0, 0.01, count=40)
    accountant.step(1.3, clients_per_round=20, count=10)
    buffer = io.BytesIO()
    np.savez(buffer, **accountant.state())
    buffer.seek(0)
    with np.load(buffer) as saved:
        state = dict(saved)
    resumed = Accountant(kind, delta=DELTA, population=1000)
    resumed.load_state(state)
    assert resumed.rounds == 50
    assert resumed.epsilon() == accountant.epsilon()
    accountant.step(1.3, 0.02, count=5)
    resumed.step(1.3, 0.02, count=5)
    assert resumed.epsilon() == accountant.epsilon()


def test_load_state_refuses_another_accountants_state():
    accountant = Accountant(delta=DELTA)
    accountant.step(1.0, 0.01, count=10)
    state = accountant.state()
    other = Accountant(delta=1e-6)
    other.step(2.0, 0.5)
    with pytest.raises(ValueError, match="delta"):
        other.load_state(state)
    with pytest.raises(ValueError, match="kind"):
        Accountant("pld", delta=DELTA).load_state(state)
    with pytest.raises(ValueError, match="counts"):
        Accountant(delta=DELTA).load_state({k: v for k, v in state.items() if k != "counts"})
    assert other.rounds == 1  # unchanged by the refusals


# -- clipping and noise --------------------------------------------------------------------------

def exact_norm(vector) -> float:
    return math.hypot(*np.ravel(vector).tolist())  # correctly rounded, no overflow: the referee


@settings(max_examples=300, deadline=None)
@given(arrays(np.float64, st.integers(1, 40), elements=st.floats(-1e300, 1e300)),
       st.floats(0.0, 1e300))
def test_clipped_norm_is_never_above_the_clip(vector, clip_norm):
    clipped, was_clipped = clip_by_l2(vector, clip_norm)
    assert clipped.dtype == np.float64 and clipped.shape == vector.shape
    assert exact_norm(clipped) <= clip_norm
    assert l2_norm(clipped) <= clip_norm
    norm = exact_norm(vector)
    if abs(norm - clip_norm) > 1e-12 * clip_norm:  # at the very edge the last bits decide
        assert was_clipped == (norm > clip_norm)
    if not was_clipped:
        assert np.array_equal(clipped, vector)
    elif clip_norm > 1e-290:  # scaled down, not turned (far enough from underflow to tell)
        assert exact_norm(clipped) >= clip_norm * (1 - 1e-11)
        a, b = clipped / np.max(np.abs(clipped)), vector / np.max(np.abs(vector))
        assert np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)) == pytest.approx(1.0, abs=1e-9)


def test_clip_by_l2_by_hand():
    clipped, was_clipped = clip_by_l2([3.0, 4.0], 1.0)
    np.testing.assert_allclose(clipped, [0.6, 0.8], rtol=2e-12)  # just inside the ball
    assert was_clipped
    inside = np.array([0.3, -0.4], dtype=np.float32)
    clipped, was_clipped = clip_by_l2(inside, 1.0)
    assert not was_clipped and clipped.dtype == np.float64 and np.array_equal(clipped, inside)
    assert clip_by_l2(np.zeros(3), 0.0)[1] is False  # zero vector, zero clip: no division by zero
    zeros, was_clipped = clip_by_l2([1.0, 2.0], 0.0)
    assert was_clipped and not zeros.any()
    assert l2_norm([1e200, 1e200]) == pytest.approx(math.sqrt(2) * 1e200, rel=1e-15)  # squares overflow
    assert l2_norm([3e-200, 4e-200]) == pytest.approx(5e-200, rel=1e-15)  # squares underflow
    huge, _ = clip_by_l2([1e200, 1e200], 2.0)
    np.testing.assert_allclose(huge, [math.sqrt(2), math.sqrt(2)], rtol=2e-12)
    with pytest.raises(ValueError):
        clip_by_l2([1.0, math.nan], 1.0)
    with pytest.raises(ValueError):
        clip_by_l2([1.0], -1.0)


def test_noise_std_by_hand():
    assert noise_std(1.5, 2.0, "central") == 3.0
    assert noise_std(1.5, 2.0, "local") == 3.0
    assert noise_std(1.5, 2.0, "distributed", num_clients=100) == pytest.approx(0.3, rel=1e-15)
    # n clients each adding z·C/√n: their sum carries the central std z·C.
    assert math.sqrt(100 * noise_std(1.5, 2.0, "distributed", num_clients=100) ** 2) == pytest.approx(3.0)
    assert noise_std(0.0, 2.0) == 0.0
    with pytest.raises(ValueError, match="num_clients"):
        noise_std(1.0, 1.0, "distributed")
    with pytest.raises(ValueError, match="mode"):
        noise_std(1.0, 1.0, "secure")


def test_noise_of_that_std_has_that_std():
    std = noise_std(1.1, 0.7, "distributed", num_clients=16)
    n = 200_000
    draws = np.random.default_rng(20260917).normal(0.0, std, size=n)
    # The sample std of n normal draws is about normal with std σ/√(2(n−1)) (chi-square, large n).
    assert abs(draws.std(ddof=1) - std) <= 5 * std / math.sqrt(2 * (n - 1))


# -- adaptive clipping ---------------------------------------------------------------------------

def test_clip_update_by_hand():
    # 70% of updates inside C, target 50%, η = 0.2: C · exp(−0.2 · 0.2).
    assert clip_update(1.0, 0.7, 0.5, 0.2) == pytest.approx(0.9607894391523232, rel=1e-15)
    assert clip_update(2.0, 0.3, 0.5, 0.2) == pytest.approx(2.0 * math.exp(0.04), rel=1e-15)
    assert clip_update(2.0, 0.5, 0.5, 0.2) == 2.0
    assert clip_update(2.0, 0.9, 0.5, 0.0) == 2.0


def test_noisy_fraction_is_the_noised_count_over_the_expected_clients():
    bits = np.array([1, 0, 1, 1, 0, 1])
    assert noisy_fraction(bits, 0.0, np.random.default_rng(0), 8) == 4 / 8
    expected = (4 + np.random.default_rng(7).normal(0.0, 0.5)) / 8
    assert noisy_fraction(bits, 0.5, np.random.default_rng(7), 8) == expected
    with pytest.raises(ValueError, match="0 or 1"):
        noisy_fraction([1, 2], 0.5, np.random.default_rng(0), 2)


@pytest.mark.parametrize("target_quantile", [0.2, 0.5, 0.8])
def test_adaptive_clip_converges_to_the_target_quantile(target_quantile):
    # Update norms log-normal(0, 0.5): the γ-quantile is exp(0.5 · Φ⁻¹(γ)). The paper's settings:
    # η = 0.2, σ_b = m/20 for m = 100 clients a round; the clip starts at 0.1, below every quantile.
    rng = np.random.default_rng(2021)
    clip, m, clips = 0.1, 100, []
    for _ in range(300):
        norms = rng.lognormal(0.0, 0.5, size=m)
        fraction = noisy_fraction(norms <= clip, m / 20, rng, m)
        clip = clip_update(clip, fraction, target_quantile, 0.2)
        clips.append(clip)
    settled = float(np.mean(clips[-100:]))
    quantile_reached = NormalDist().cdf(math.log(settled) / 0.5)  # the share of norms below it
    assert quantile_reached == pytest.approx(target_quantile, abs=0.03)


def test_update_noise_multiplier_by_hand():
    assert update_noise_multiplier(1.0, 5.0) == pytest.approx(1 / math.sqrt(0.99), rel=1e-15)
    # (2σ_b)⁻² = 0.75 leaves 0.25 of z⁻² = 1 to the updates: z_Δ = 2.
    assert update_noise_multiplier(1.0, 1 / (2 * math.sqrt(0.75))) == pytest.approx(2.0, rel=1e-12)
    assert update_noise_multiplier(1.0, math.inf) == 1.0
    assert update_noise_multiplier(0.0, 1.0) == 0.0
    for too_small in (0.5, 0.3, 0.0):
        with pytest.raises(ValueError, match="too small"):
            update_noise_multiplier(1.0, too_small)


def test_update_and_count_queries_together_cost_one_gaussian_of_the_total_noise():
    z, sigma_b = 1.1, 5.0
    both = dp_accounting.rdp.RdpAccountant()
    both.compose(dp_accounting.ComposedDpEvent([
        dp_accounting.GaussianDpEvent(update_noise_multiplier(z, sigma_b)),
        dp_accounting.GaussianDpEvent(2 * sigma_b)]))  # bits ±1/2: sensitivity 1/2
    one = dp_accounting.rdp.RdpAccountant()
    one.compose(dp_accounting.GaussianDpEvent(z))
    np.testing.assert_allclose(both.rdp, one.rdp, rtol=1e-12)
