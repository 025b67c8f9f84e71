"""Client contribution scoring (fedstack.contribution): exact and GTG Shapley values, leave-one-out, cosine
scores, the coalition model, Spearman's rho and the payout — hand cases and properties of the Shapley value."""

import copy
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedstack.contribution import (MAX_EXACT_PLAYERS, METHODS, Game, Scores, coalition_model, cosine_scores,
                                   exact_shapley, gtg_shapley, leave_one_out, payout, score, spearman)


class Recorder:
    """A batched `values` function from a utility of one coalition, recording every batch it is asked for."""

    def __init__(self, utility):
        self.utility = utility
        self.batches: list[list[frozenset]] = []

    def __call__(self, coalitions):
        self.batches.append(list(coalitions))
        return [self.utility(c) for c in coalitions]

    @property
    def asked(self) -> list[frozenset]:
        return [c for batch in self.batches for c in batch]


def table_game(n: int, table: dict) -> tuple[Game, Recorder]:
    """A game whose utilities are written out: `table` maps a coalition (as a string of players, "" for the
    empty one, "02" for {0, 2}) to v."""
    rec = Recorder(lambda c: table["".join(str(i) for i in sorted(c))])
    return Game(n, rec), rec


def mask_game(n: int, v) -> tuple[Game, Recorder]:
    """A game with v given per bit mask (v[mask] or v(mask))."""
    get = v if callable(v) else v.__getitem__
    rec = Recorder(lambda c: float(get(sum(1 << i for i in c))))
    return Game(n, rec), rec


# ---------------------------------------------------------------------------------------------------- exact

def test_exact_shapley_by_hand_in_one_batch():
    # v: ∅ 0, {0} 1, {1} 2, {2} 0, {0,1} 4, {0,2} 3, {1,2} 2, N 6. With n = 3 the weights are 1/3 for S = ∅ and
    # S = N \ {i}, 1/6 for the two singletons:
    # φ0 = 1/3·(1−0) + 1/6·(4−2) + 1/6·(3−0) + 1/3·(6−2) = 1/3 + 1/3 + 1/2 + 4/3 = 5/2
    # φ1 = 1/3·(2−0) + 1/6·(4−1) + 1/6·(2−0) + 1/3·(6−3) = 2/3 + 1/2 + 1/3 + 1   = 5/2
    # φ2 = 1/3·(0−0) + 1/6·(3−1) + 1/6·(2−2) + 1/3·(6−4) = 0   + 1/3 + 0   + 2/3 = 1   (Σ = 6 = v(N) − v(∅))
    game, rec = table_game(3, {"": 0, "0": 1, "1": 2, "2": 0, "01": 4, "02": 3, "12": 2, "012": 6})
    assert exact_shapley(game) == pytest.approx([2.5, 2.5, 1.0], abs=1e-12)
    assert len(rec.batches) == 1 and len(rec.batches[0]) == 8 and len(set(rec.batches[0])) == 8
    assert game.evaluations == 8 and game.calls == 1
    exact_shapley(game)  # all cached now: no second call
    assert len(rec.batches) == 1 and game.evaluations == 8


def test_exact_shapley_of_the_glove_game():
    # Player 0 holds a left glove, 1 and 2 a right one; a coalition is worth 1 if it can make a pair.
    # φ1: its glove matters only after 0 and before 2: 1 of the 6 orders → 1/6; likewise φ2; φ0 = 1 − 2/6 = 2/3.
    game, _ = table_game(3, {"": 0, "0": 0, "1": 0, "2": 0, "01": 1, "02": 1, "12": 0, "012": 1})
    assert exact_shapley(game) == pytest.approx([2 / 3, 1 / 6, 1 / 6], abs=1e-12)


def test_exact_shapley_refuses_too_many_players_before_evaluating_anything():
    game, rec = mask_game(MAX_EXACT_PLAYERS + 1, lambda m: 0.0)
    with pytest.raises(ValueError, match="2\\^17"):
        exact_shapley(game)
    assert rec.batches == []


values_of_games = st.integers(1, 6).flatmap(
    lambda n: st.tuples(st.just(n), st.lists(st.floats(-100, 100), min_size=1 << n, max_size=1 << n)))


@settings(max_examples=60, deadline=None)
@given(values_of_games)
def test_shapley_is_efficient(game_values):
    n, v = game_values
    game, _ = mask_game(n, v)
    phi = exact_shapley(game)
    assert phi.sum() == pytest.approx(v[(1 << n) - 1] - v[0], abs=1e-9)


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 6).flatmap(lambda n: st.tuples(
    st.just(n), st.lists(st.floats(-100, 100), min_size=3 << (n - 2), max_size=3 << (n - 2)))))
def test_shapley_is_symmetric(game_values):
    # v depends on how many of players 0 and 1 are in S (0, 1 or 2) and on the rest of S: 0 and 1 are
    # interchangeable, so their marginal contributions are equal and so must their values be.
    n, table = game_values

    def v(mask):
        return table[(mask & 1) + (mask >> 1 & 1) + 3 * (mask >> 2)]

    phi = exact_shapley(mask_game(n, v)[0])
    assert phi[0] == pytest.approx(phi[1], abs=1e-9)


@settings(max_examples=60, deadline=None)
@given(values_of_games.filter(lambda g: g[0] >= 2), st.data())
def test_a_null_player_gets_nothing(game_values, data):
    n, table = game_values
    null = data.draw(st.integers(0, n - 1))
    phi = exact_shapley(mask_game(n, lambda m: table[m & ~(1 << null)])[0])  # v(S ∪ {null}) = v(S)
    assert phi[null] == pytest.approx(0.0, abs=1e-12)


# ------------------------------------------------------------------------------------------------------ GTG

A = np.array([0.1, 0.3, 0.6, 1.0, 1.5, 2.5])  # each client's "amount of learning"
NOISE = np.random.default_rng(7).normal(0.0, 0.002, 1 << len(A))  # interactions: a fixed wobble per coalition


def saturating(mask: int) -> float:
    """Accuracy-like: additive in the exponent, saturating towards 1, plus a small per-coalition wobble; once a
    prefix holds the big clients the rest add (almost) nothing, which is where GTG truncates."""
    s = sum(A[i] for i in range(len(A)) if mask >> i & 1)
    return float(1.0 - np.exp(-s) + (NOISE[mask] if mask else 0.0))


def test_gtg_ranks_like_exact_shapley_with_fewer_evaluations():
    exact = exact_shapley(mask_game(6, saturating)[0])
    game, rec = mask_game(6, saturating)
    phi = gtg_shapley(game, eps=0.01, seed_rng=np.random.default_rng(0))
    assert spearman(exact, phi) >= 0.9
    assert game.evaluations < 2 ** 6
    assert len(set(rec.asked)) == len(rec.asked) == game.evaluations
    # Within-round truncation keeps efficiency to within eps: each permutation sums to v(its last prefix) − v(∅).
    assert abs(phi.sum() - (saturating(63) - saturating(0))) < 0.01


def test_gtg_batches_one_call_per_position_of_a_cycle():
    game, rec = mask_game(6, saturating)
    gtg_shapley(game, eps=0.0, max_permutations=6, seed_rng=np.random.default_rng(1))  # one cycle, no truncation
    assert len(rec.batches) <= 1 + 6  # v(∅), v(N); then one call per position (the last, N, is cached)
    assert [len(b) for b in rec.batches][:2] == [2, 6]  # position 0: the 6 singletons, one per leader


def test_gtg_between_round_truncation():
    game, rec = mask_game(5, lambda m: 0.8 + 1e-4 * bin(m).count("1"))  # the round moved v by 5e-4 < eps
    assert gtg_shapley(game, eps=1e-3, seed_rng=np.random.default_rng(0)).tolist() == [0.0] * 5
    assert game.evaluations == 2 and rec.batches == [[frozenset(), frozenset(range(5))]]


def test_gtg_is_deterministic_given_the_seed():
    runs = [gtg_shapley(mask_game(6, saturating)[0], eps=0.001, seed_rng=np.random.default_rng(42)) for _ in "ab"]
    assert np.array_equal(runs[0], runs[1])


def test_gtg_is_exact_on_an_additive_game():
    # Every marginal contribution of i is a_i, whatever the permutation: any sample gives the exact value.
    game, _ = mask_game(6, lambda m: float(sum(A[i] for i in range(6) if m >> i & 1)))
    assert gtg_shapley(game, eps=0.0, seed_rng=np.random.default_rng(3)) == pytest.approx(A, abs=1e-12)


def permutations_drawn(rng: np.random.Generator, n: int, seed: int) -> int:
    """How many permutations of n − 1 clients `rng`, seeded with `seed`, has drawn (judged by what it draws next)."""
    after = rng.random()
    ref = np.random.default_rng(seed)
    for k in range(1000):
        if copy.deepcopy(ref).random() == after:
            return k
        ref.permutation(n - 1)
    raise AssertionError("not a whole number of permutations")


def test_gtg_stops_after_two_cycles_at_the_earliest_and_at_max_permutations_at_the_latest():
    rng = np.random.default_rng(5)
    gtg_shapley(mask_game(6, saturating)[0], eps=0.0, convergence=1e9, seed_rng=rng)
    assert permutations_drawn(rng, 6, 5) == 2 * 6  # converged at once, but the test needs two cycles
    rng = np.random.default_rng(5)
    gtg_shapley(mask_game(6, saturating)[0], eps=0.0, convergence=1e-12, max_permutations=15, seed_rng=rng)
    assert permutations_drawn(rng, 6, 5) == 15  # two cycles and the first 3 permutations of a third
    rng = np.random.default_rng(5)
    gtg_shapley(mask_game(6, saturating)[0], eps=0.0, convergence=1e-12, seed_rng=rng)
    assert permutations_drawn(rng, 6, 5) == 10 * 6  # the default budget: ten cycles


@pytest.mark.filterwarnings("error")  # eps = 0 with clients at exactly 0: no 0/0 in the convergence test
@settings(max_examples=40, deadline=None)
@given(values_of_games, st.one_of(st.just(0.0), st.floats(0.0, 5.0)), st.integers(0, 2 ** 32 - 1))
def test_gtg_is_efficient_to_within_eps(game_values, eps, seed):
    n, v = game_values
    game, rec = mask_game(n, v)
    phi = gtg_shapley(game, eps=eps, max_permutations=3 * n, seed_rng=np.random.default_rng(seed))
    total = v[(1 << n) - 1] - v[0]
    if abs(total) < eps:
        assert phi.tolist() == [0.0] * n
    else:
        assert abs(phi.sum() - total) <= eps + 1e-9
    assert len(set(rec.asked)) == len(rec.asked)


def test_gtg_checks_its_options():
    game, _ = mask_game(3, lambda m: float(m))
    for bad in ({"eps": -1.0}, {"convergence": 0.0}, {"max_permutations": 0}):
        with pytest.raises(ValueError):
            gtg_shapley(game, seed_rng=np.random.default_rng(0), **bad)


# ----------------------------------------------------------------------------------- leave-one-out, cosine

def test_leave_one_out_by_hand():
    game, rec = table_game(3, {"": 0, "0": 1, "1": 2, "2": 0, "01": 4, "02": 3, "12": 2, "012": 6})
    # v(N) = 6; without 0: v({1,2}) = 2 → 4; without 1: v({0,2}) = 3 → 3; without 2: v({0,1}) = 4 → 2
    assert leave_one_out(game).tolist() == [4.0, 3.0, 2.0]
    assert len(rec.batches) == 1 and game.evaluations == 4


def test_cosine_scores_by_hand():
    u = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], dtype=np.float32)
    w = np.array([1.0, 2.0, 5.0])
    # others of 0: 2·(0,1) = (0,2) ⟂ (1,0) → 0; others of 1: (1,0) ⟂ (0,1) → 0; client 2 sent nothing → 0
    assert cosine_scores(u, w).tolist() == [0.0, 0.0, 0.0]
    u = np.array([[3.0, 4.0], [1.0, 0.0], [0.0, 2.0]])
    w = np.array([1.0, 3.0, 1.0])
    # others of 0: 3·(1,0) + (0,2) = (3,2): (9 + 8) / (5·√13) = 17 / (5√13)
    # others of 1: (3,4) + (0,2) = (3,6): 3 / (1·√45) = 1/√5
    # others of 2: (3,4) + 3·(1,0) = (6,4): 8 / (2·√52) = 4/√52 = 2/√13
    expected = [17 / (5 * math.sqrt(13)), 1 / math.sqrt(5), 2 / math.sqrt(13)]
    assert cosine_scores(u, w) == pytest.approx(expected, abs=1e-12)
    # the others cancel exactly: (1,1) + (−1,−1) leaves client 2 with no direction to compare with
    u = np.array([[1.0, 1.0], [-1.0, -1.0], [0.3, 0.7]])
    assert cosine_scores(u, np.ones(3))[2] == 0.0
    assert cosine_scores(np.array([[1.0, 2.0]]), np.array([4.0])).tolist() == [0.0]  # alone: no others


def test_coalition_model_by_hand():
    base = np.array([1.0, 1.0], dtype=np.float32)
    u = np.array([[1.0, 0.0], [0.0, 3.0], [9.0, 9.0]], dtype=np.float32)
    w = np.array([1.0, 2.0, 7.0])
    # {0,1}: (1·(1,0) + 2·(0,3)) / 3 = (1/3, 2) → (4/3, 3)
    got = coalition_model(base, u, w, {0, 1})
    assert got.dtype == np.float32 and got.tolist() == pytest.approx([4 / 3, 3.0], abs=1e-6)
    assert coalition_model(base, u, w, [2]).tolist() == [10.0, 10.0]
    empty = coalition_model(base, u, w, frozenset())
    assert empty.tolist() == [1.0, 1.0] and empty is not base
    with pytest.raises(ValueError):
        coalition_model(base, u, w, {3})
    # "share": each member's weighted update over the round's weight 10: {0,1} → (1 + 1/10, 1 + 6/10)
    assert coalition_model(base, u, w, {0, 1}, "share").tolist() == pytest.approx([1.1, 1.6], abs=1e-6)
    assert coalition_model(base, u, w, {0, 1, 2}, "share").tolist() == \
        pytest.approx(coalition_model(base, u, w, {0, 1, 2}).tolist(), abs=1e-6)  # the grand coalition agrees
    with pytest.raises(ValueError, match="coalition must be one of mean, share"):
        coalition_model(base, u, w, {0}, "median")


def test_a_zero_update_is_a_null_player_when_members_add_their_share():
    """Two clients whose updates move a 1-d model towards 1 (the utility: −|x − 1|), and one sending zeros: under
    "mean" the zero update dilutes the overshooting client's step and scores above 0; under "share" it scores 0."""
    base = np.array([0.0], dtype=np.float32)
    u = np.array([[3.0], [1.0], [0.0]], dtype=np.float32)  # client 0 overshoots, client 1 lands, client 2 zero
    w = np.array([1.0, 1.0, 1.0])
    for coalition, rider_positive in (("mean", True), ("share", False)):
        def values(coalitions):
            return [-abs(float(coalition_model(base, u, w, s, coalition)[0]) - 1.0) for s in coalitions]
        phi = exact_shapley(Game(3, values))
        assert bool(phi[2] > 1e-9) == rider_positive, (coalition, phi)
        if not rider_positive:
            assert phi[2] == pytest.approx(0.0, abs=1e-9)


# ------------------------------------------------------------------------------------- spearman, payout

def test_spearman_by_hand():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ties: a = (1, 2, 2, 3) ranks (1, 2.5, 2.5, 4); b = (1, 2, 3, 4) ranks (1, 2, 3, 4). Centred on 2.5:
    # a' = (−1.5, 0, 0, 1.5), b' = (−1.5, −0.5, 0.5, 1.5); a'·b' = 4.5, |a'|² = 4.5, |b'|² = 5 → 4.5/√22.5 = 3/√10
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(3 / math.sqrt(10), abs=1e-12)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    assert math.isnan(spearman([5], [2]))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(-5, 5), st.floats(-1e6, 1e6)), min_size=2, max_size=20))
def test_spearman_is_the_pearson_correlation_of_ranks_and_ignores_monotone_maps(pairs):
    a, b = np.array(pairs, dtype=np.float64).T
    rho = spearman(a, b)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        assert math.isnan(rho)
    else:
        assert -1 - 1e-12 <= rho <= 1 + 1e-12
        assert spearman(np.exp(a), b) == pytest.approx(rho, abs=1e-9)  # ranks only
        assert spearman(b, a) == pytest.approx(rho, abs=1e-12)


def test_payout():
    assert payout({0: 1.0, 1: 3.0}, 100.0) == {0: 25.0, 1: 75.0}
    assert payout({0: 2.0, 1: -5.0, 2: 0.0, 3: 6.0}, 8.0) == {0: 2.0, 1: 0.0, 2: 0.0, 3: 6.0}
    assert payout({0: -1.0, 1: 0.0}, 50.0) == {0: 0.0, 1: 0.0}
    assert payout({}, 10.0) == {}
    with pytest.raises(ValueError):
        payout({0: 1.0}, -1.0)


# ----------------------------------------------------------------------------------------- Game, dispatch

def test_game_never_evaluates_a_coalition_twice():
    game, rec = mask_game(4, lambda m: float(bin(m).count("1") ** 2))
    assert game.grand == frozenset(range(4))
    assert game.value({0, 1}) == 4.0
    assert game.values([{0, 1}, {2}, [2], frozenset({3, 0})]) == [4.0, 1.0, 1.0, 4.0]
    assert rec.batches[-1] == [frozenset({2}), frozenset({0, 3})]  # only the missing ones, each once
    leave_one_out(game)
    gtg_shapley(game, eps=0.0, seed_rng=np.random.default_rng(0))
    exact_shapley(game)
    assert len(rec.asked) == len(set(rec.asked)) == game.evaluations == 16
    assert game.values([]) == [] and len(rec.batches) == game.calls
    with pytest.raises(ValueError, match="outside"):
        game.value({4})


def test_game_rejects_a_values_function_that_returns_the_wrong_number():
    game = Game(2, lambda cs: [0.0])
    with pytest.raises(ValueError, match="returned 1 utilities for 2"):
        game.values([{0}, {1}])


def test_score_dispatches_and_counts_evaluations():
    game, _ = table_game(3, {"": 0, "0": 1, "1": 2, "2": 0, "01": 4, "02": 3, "12": 2, "012": 6})
    loo, used = score("loo", game)
    assert loo.tolist() == [4.0, 3.0, 2.0] and used == 4
    phi, used = score("shapley", game)
    assert phi == pytest.approx([2.5, 2.5, 1.0]) and used == 8 - 4  # the leave-one-out coalitions were cached
    phi, used = score("gtg", game, rng=np.random.default_rng(0), eps=0.0)
    assert used == 0 and phi.sum() == pytest.approx(6.0)
    cos, used = score("cosine", None, np.eye(3), np.ones(3))
    assert cos.tolist() == [0.0, 0.0, 0.0] and used == 0
    with pytest.raises(ValueError, match="'banzhaf'"):
        score("banzhaf", game)
    with pytest.raises(ValueError, match="needs a Game"):
        score("loo", None)
    with pytest.raises(ValueError, match="rng"):
        score("gtg", game)
    assert set(METHODS) == {"shapley", "gtg", "loo", "cosine"}


def test_scores_record():
    rec = Scores(method="gtg", round=3, clients=[4, 9], values=[0.5, 0.25], evaluations=7, seconds=1.5)
    assert (rec.method, rec.round, rec.clients, rec.values, rec.evaluations, rec.seconds) == (
        "gtg", 3, [4, 9], [0.5, 0.25], 7, 1.5)
