import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fedstack.client import FitConfig
from fedstack.plan import load_config
from fedstack.errors import ConfigError
from fedstack.strategy import ClientUpdate, FedAvg, FedOpt, build_strategy
from fedstack.strategy.robust import (Robust, centered_clip, coordinate_median, fltrust, krum, krum_scores,
                                      norm_bound, pairwise_sq_distances, trimmed_mean)

F32 = np.float32


def _m(rows):
    return np.array(rows, dtype=F32)


# -- exact, hand-computed cases ----------------------------------------------------------------------

def test_coordinate_median_odd_and_even():
    U = _m([[1, 10], [3, -5], [100, 0]])
    np.testing.assert_array_equal(coordinate_median(U), [3, 0])
    np.testing.assert_array_equal(coordinate_median(U[:2]), [2, 2.5])


def test_trimmed_mean_drops_floor_beta_n_from_each_end_per_coordinate():
    U = _m([[1, 50], [2, 40], [3, 30], [4, 20], [1000, -1000]])
    # β = 0.2, n = 5: one value dropped at each end of every coordinate
    np.testing.assert_allclose(trimmed_mean(U, 0.2), [3, 30])
    np.testing.assert_allclose(trimmed_mean(U, 0.1), U.mean(axis=0))  # ⌊0.5⌋ = 0: the plain mean
    with pytest.raises(ValueError, match="beta < 0.5"):
        trimmed_mean(U, 0.5)


def test_pairwise_distances_and_krum_scores():
    U = _m([[0, 0], [1, 0], [0, 2], [10, 10]])
    D = pairwise_sq_distances(U)
    np.testing.assert_array_equal(D, [[0, 1, 4, 200], [1, 0, 5, 181], [4, 5, 0, 164], [200, 181, 164, 0]])
    # n = 4, f = 0: each row sums its n − f − 2 = 2 nearest others
    np.testing.assert_array_equal(krum_scores(U, 0), [5, 6, 9, 345])
    aggregate, chosen = krum(U, 0)
    np.testing.assert_array_equal(aggregate, [0, 0])
    assert list(chosen) == [0]
    aggregate, chosen = krum(U, 0, m=2)  # Multi-Krum: the mean of the two best
    np.testing.assert_array_equal(aggregate, [0.5, 0])
    with pytest.raises(ValueError, match="n > 2f \\+ 2"):
        krum(U, 1)


def test_norm_bound_clips_to_the_median_norm_then_weights():
    U = _m([[3, 4], [0, 1], [0, 10]])  # norms 5, 1, 10: median 5
    aggregate, bound = norm_bound(U, np.array([1.0, 1.0, 2.0]))
    assert bound == 5
    np.testing.assert_allclose(aggregate, (np.array([3, 4]) + [0, 1] + 2 * np.array([0, 5])) / 4, rtol=1e-6)
    aggregate, bound = norm_bound(U, np.ones(3), bound=1.0)
    np.testing.assert_allclose(aggregate, (np.array([0.6, 0.8]) + [0, 1] + [0, 1]) / 3, rtol=1e-6)


def test_centered_clip_one_iteration_by_hand():
    U = _m([[1, 0], [0, 1], [100, 0]])
    aggregate, tau = centered_clip(U, np.zeros(2, F32), tau=1.0, iters=1)
    # distances 1, 1, 100: the outlier moves the center by only τ/n
    np.testing.assert_allclose(aggregate, [(1 + 0 + 1) / 3, 1 / 3], rtol=1e-6)
    assert tau == 1.0
    _, adaptive = centered_clip(U, np.zeros(2, F32), iters=1)
    assert adaptive == 1.0  # τ = 0: the median distance to the center


def test_fltrust_trust_is_relu_cosine_and_updates_take_the_root_norm():
    root = np.array([2, 0], F32)
    U = _m([[10, 0], [1, 1], [-5, 0], [0, 3]])  # cosines 1, 1/√2, −1, 0
    aggregate, trust = fltrust(U, root)
    np.testing.assert_allclose(trust, [1, 1 / np.sqrt(2), 0, 0], rtol=1e-6)
    expected = (1 * np.array([2, 0]) + (1 / np.sqrt(2)) * np.array([np.sqrt(2), np.sqrt(2)])) / (1 + 1 / np.sqrt(2))
    np.testing.assert_allclose(aggregate, expected, rtol=1e-6)
    nothing, trust = fltrust(_m([[-1, 0]]), root)
    np.testing.assert_array_equal(nothing, [0, 0])
    assert trust.sum() == 0


# -- properties --------------------------------------------------------------------------------------

matrices = st.integers(1, 9).flatmap(lambda n: st.integers(1, 6).flatmap(
    lambda d: arrays(F32, (n, d), elements=st.floats(-1e3, 1e3, width=32))))


@settings(max_examples=60, deadline=None)
@given(matrices, st.floats(0, 0.49))
def test_median_and_trimmed_mean_stay_within_the_coordinate_range(U, beta):
    lo, hi = U.min(axis=0), U.max(axis=0)
    slack = 1e-3 * (1 + np.abs(U).max())
    for aggregate in (coordinate_median(U), trimmed_mean(U, beta)):
        assert np.all(aggregate >= lo - slack) and np.all(aggregate <= hi + slack)


@settings(max_examples=40, deadline=None)
@given(matrices, st.randoms(use_true_random=False))
def test_rules_do_not_depend_on_the_order_of_clients(U, random):
    order = list(range(len(U)))
    random.shuffle(order)
    V = U[order]
    np.testing.assert_array_equal(coordinate_median(U), coordinate_median(V))
    np.testing.assert_allclose(trimmed_mean(U, 0.2), trimmed_mean(V, 0.2), rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(centered_clip(U, np.zeros(U.shape[1]), iters=2)[0],
                               centered_clip(V, np.zeros(U.shape[1]), iters=2)[0], rtol=1e-4, atol=1e-2)
    if len(U) >= 5:  # Krum's selection is a set; with ties the earlier row wins, so compare scores
        np.testing.assert_allclose(np.sort(krum_scores(U, 1)), np.sort(krum_scores(V, 1)), rtol=1e-6)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31), st.integers(1, 3))
def test_krum_picks_an_honest_update_when_the_f_outliers_are_far(seed, f):
    rng = np.random.default_rng(seed)
    n = 2 * f + 3 + int(rng.integers(0, 4))
    honest = rng.normal(0, 1, (n - f, 8)).astype(F32)
    outliers = rng.normal(0, 1, (f, 8)).astype(F32) + 100 * rng.choice([-1, 1], size=(f, 8)).astype(F32)
    U = np.concatenate([honest, outliers])
    _, chosen = krum(U, f, m=n - f)
    assert set(chosen.tolist()) == set(range(n - f))


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31))
def test_centered_clip_without_outliers_is_close_to_the_mean(seed):
    U = np.random.default_rng(seed).normal(0, 1, (8, 16)).astype(F32)
    mean = U.mean(axis=0)
    # a radius larger than any distance: the iteration is the mean after one step from any center
    np.testing.assert_allclose(centered_clip(U, np.full(16, 3, F32), tau=1e6)[0], mean, rtol=1e-5, atol=1e-5)
    # adaptive τ: iterations converge towards the mean
    adaptive = centered_clip(U, np.zeros(16, F32), iters=20)[0]
    assert np.linalg.norm(adaptive - mean) < 0.5 * np.linalg.norm(mean) + 0.2


# -- the strategy ------------------------------------------------------------------------------------

def _updates(rows, weights=None):
    return [ClientUpdate(i, np.asarray(r, F32), 1 if weights is None else weights[i]) for i, r in enumerate(rows)]


def test_robust_hands_the_rules_aggregate_to_the_inner_server_step():
    strategy = Robust(FedAvg(server_lr=0.5), "median", capacity=2)  # capacity grows when more arrive
    params = np.ones(2, F32)
    new = strategy.aggregate(1, params, _updates([[1, 10], [3, -5], [100, 0]], weights=[1, 1, 10**6]))
    np.testing.assert_array_equal(new, params + 0.5 * np.array([3, 0], F32))
    figures = strategy.round_figures()
    assert figures["aggregate_s"] >= 0 and strategy.round_figures() == {}
    assert strategy.aggregate(2, params, []) is params  # nobody came: no step


def test_robust_in_front_of_a_server_optimizer_and_its_state_round_trip():
    strategy = Robust(FedOpt("fedavgm", server_lr=1.0, momentum=0.5), "centered_clip", capacity=3)
    params = np.zeros(2, F32)
    strategy.aggregate(1, params, _updates([[1, 0], [1, 0], [1, 0]]))
    state = strategy.state()
    assert set(state) == {"center", "inner.velocity"}
    np.testing.assert_allclose(state["center"], [1, 0], rtol=1e-6)
    twin = Robust(FedOpt("fedavgm", server_lr=1.0, momentum=0.5), "centered_clip", capacity=3)
    twin.load_state(state)
    a = strategy.aggregate(2, params, _updates([[0, 1], [0, 1], [9, 9]]))
    b = twin.aggregate(2, params, _updates([[0, 1], [0, 1], [9, 9]]))
    np.testing.assert_array_equal(a, b)


def test_krum_records_the_clients_it_kept_and_survives_a_thin_round():
    strategy = Robust(FedAvg(), "krum", byzantine=0.2)
    updates = [ClientUpdate(cid, np.asarray(r, F32), 1) for cid, r in
               zip([7, 3, 9, 4, 5], [[0, 0], [0.1, 0], [0, 0.1], [0.05, 0.05], [50, 50]])]
    strategy.aggregate(1, np.zeros(2, F32), updates)
    assert strategy.round_figures()["robust_selected"] == [4]  # the most central update, client 4
    new = strategy.aggregate(2, np.zeros(2, F32), _updates([[1, 1], [3, 3]]))  # n = 2 < 3: median
    np.testing.assert_array_equal(new, [2, 2])


def test_build_strategy_names_and_the_aggregator_key():
    fit = FitConfig()
    median = build_strategy(load_config(None, ["server.strategy=median"]).server, fit, 100)
    assert isinstance(median, Robust) and isinstance(median.inner, FedAvg) and median.rule == "median"
    adam = build_strategy(load_config(None, ["server.strategy=fedadam", "server.aggregator=trimmed_mean"]).server,
                          fit, 100)
    assert isinstance(adam.inner, FedOpt) and adam.inner.kind == "fedadam" and adam.rule == "trimmed_mean"


@pytest.mark.parametrize("overrides, key, words", [
    (["server.strategy=trimmed_mean", "server.trim_beta=0.5"], "server.trim_beta", "β < 0.5"),
    (["server.strategy=krum", "server.byzantine=0.4"], "server.byzantine", "n > 2f + 2"),
    (["server.strategy=multi_krum", "server.clients_per_round=4", "server.byzantine=0.25"], "server.byzantine",
     "n > 2f + 2"),
    (["server.strategy=median", "attack.name=sign_flip", "attack.fraction=0.5"], "attack.fraction",
     "fewer than half"),
    (["server.aggregator=centered_clip", "attack.name=gaussian", "attack.ids=[0, 1, 2, 3, 4]",
      "data.num_clients=10"], "attack.ids", "fewer than half"),
    (["server.strategy=scaffold", "server.aggregator=median"], "server.aggregator", "synchronous"),
    (["server.strategy=fedbuff", "server.aggregator=krum"], "server.aggregator", "synchronous"),
    (["server.strategy=median", "server.aggregator=krum"], "server.aggregator", "robust rule already"),
    (["server.strategy=median", "codec.pipeline=[\"clip\", \"secagg\"]"], "server.strategy", "only their sum"),
    (["server.aggregator=krum", "codec.pipeline=[\"clip\"]"], "server.aggregator", "differential privacy"),
    (["server.max_norm_ratio=0.5"], "server.max_norm_ratio", ">= 1"),
])
def test_bad_robust_configs_fail_before_training_naming_the_key_and_the_bound(overrides, key, words):
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert info.value.key == key and words in str(info.value)


def test_a_malicious_minority_is_fine_and_fltrust_takes_a_majority():
    load_config(None, ["server.strategy=median", "attack.name=sign_flip", "attack.fraction=0.49"])
    load_config(None, ["server.strategy=fltrust", "attack.name=sign_flip", "attack.fraction=0.6"])
