import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedstack.sampling import AvailableSampler, OortSampler, build_sampler
from fedstack.systems import DAY_S, Availability, DeviceProfile, Fleet, UniformSystem, heterogeneous

FLEET = heterogeneous(60, seed=11, diurnal=True, online_hours=5)


def picks(sampler, rounds, k, now=0.0):
    """How often each client is picked over `rounds` (1, 2, ...)."""
    counts = np.zeros(sampler.num_clients, dtype=np.int64)
    for rnd in rounds:
        for c in sampler.sample(rnd, k, now=now):
            counts[c] += 1
    return counts


def observe_all(sampler, rnd, losses, durations, num_examples=100):
    for c, (loss, duration) in enumerate(zip(losses, durations)):
        sampler.observe(rnd, c, num_examples=num_examples, loss=loss, duration_s=duration)


def test_before_any_observation_it_explores_the_online_like_the_available_sampler():
    offline = Availability.intervals([(100, 200)])
    fleet = Fleet([DeviceProfile(availability=offline if i % 4 == 0 else Availability()) for i in range(40)])
    oort, available = OortSampler(40, fleet, seed=7), AvailableSampler(40, fleet, seed=7)
    for rnd in range(1, 30):
        for attempt in range(2):
            chosen = oort.sample(rnd, 6, attempt, now=0.0, exclude=[1, 2])
            assert chosen == available.sample(rnd, 6, attempt, now=0.0, exclude=[1, 2])
            assert not {0, 1, 2} & set(chosen) and all(c % 4 for c in chosen)
    assert oort.sample(1, 50, now=0.0, exclude=[1]) == [i for i in range(2, 40) if i % 4]  # too few: all of them


def test_it_prefers_high_loss_clients_among_equally_fast_ones():
    oort = OortSampler(20, UniformSystem(), seed=1, explore=0.0)
    observe_all(oort, 1, losses=[0.1] * 10 + [2.0] * 10, durations=[10.0] * 20)
    counts = picks(oort, range(2, 202), k=5)
    assert counts[10:].sum() > 0.9 * counts.sum()
    assert (counts[10:] > 0).all()  # drawn ∝ score among the best: every high-loss client gets rounds


def test_it_prefers_fast_clients_among_equal_loss_ones():
    oort = OortSampler(20, UniformSystem(), seed=2, explore=0.0)
    slow = [3, 9, 15]
    durations = [1000.0 if c in slow else 10.0 for c in range(20)]  # T = the median = 10 s; slow ≫ T
    observe_all(oort, 1, losses=[1.0] * 20, durations=durations)
    counts = picks(oort, range(2, 202), k=5)
    assert counts[slow].sum() < 0.02 * counts.sum()
    assert oort.scores(np.array([3, 4]), 10)[0] == pytest.approx(oort.scores(np.array([3, 4]), 10)[1] * 1e-4)


def test_a_client_that_failed_keeps_its_utility_but_is_judged_by_how_long_it_took():
    oort = OortSampler(4, UniformSystem(), seed=0, explore=0.0)
    observe_all(oort, 1, losses=[1.0] * 4, durations=[10.0] * 4)
    oort.observe(2, 0, loss=None, duration_s=500.0)  # past the deadline: no loss, at least 500 s
    assert oort.utility[0] == 100.0 and oort.duration[0] == 500.0 and oort.last_round[0] == 2
    assert oort.scores(np.arange(4), 3)[0] < 0.01 * oort.scores(np.arange(4), 3)[1]


def test_the_exploration_fraction_decays_with_the_round():
    oort = OortSampler(100, UniformSystem(), seed=3, explore=0.9, explore_decay=0.9, explore_min=0.2)
    observe_all(oort, 1, losses=np.linspace(0.1, 1.0, 50), durations=[5.0] * 50)  # clients 0..49 explored
    unexplored_picked = [sum(c >= 50 for c in oort.sample(rnd, 10)) for rnd in (1, 5, 10, 30)]
    assert [oort.exploration(rnd) for rnd in (1, 30)] == [0.9, 0.2]
    assert unexplored_picked == [round(oort.exploration(rnd) * 10) for rnd in (1, 5, 10, 30)] == [9, 6, 3, 2]
    assert OortSampler(10, UniformSystem(), explore=0.0).exploration(1) == 0.0  # explore=0 turns it off


def test_too_few_of_one_kind_lets_the_other_fill_the_rounds():
    oort = OortSampler(30, UniformSystem(), seed=4, explore=0.9)
    observe_all(oort, 1, losses=[1.0] * 28, durations=[5.0] * 28)  # only 28 and 29 unexplored
    chosen = oort.sample(2, 10)
    assert len(chosen) == 10 and {28, 29} <= set(chosen)


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**31), rnd=st.integers(1, 500), attempt=st.integers(0, 3),
       now=st.floats(0, 30 * DAY_S, allow_nan=False), k=st.integers(1, 60),
       exclude=st.sets(st.integers(0, 59), max_size=60),
       results=st.lists(st.tuples(st.integers(0, 59), st.none() | st.floats(0, 10), st.floats(0.1, 1e4)),
                        max_size=80))
def test_it_never_picks_an_excluded_or_offline_client(seed, rnd, attempt, now, k, exclude, results):
    oort = OortSampler(60, FLEET, seed)
    for client, loss, duration in results:
        oort.observe(max(1, rnd - 1), client, num_examples=50, loss=loss, duration_s=duration)
    chosen = oort.sample(rnd, k, attempt, now=now, exclude=exclude)
    remaining = set(FLEET.online_ids(now, 60)) - exclude
    assert set(chosen) <= remaining
    assert chosen == sorted(set(chosen)) and all(isinstance(c, int) for c in chosen)
    assert len(chosen) == min(k, len(remaining))


def learnt(seed=5):
    oort = OortSampler(50, FLEET, seed, explore=0.5)
    rng = np.random.default_rng(0)
    for c in range(0, 50, 2):
        oort.observe(1 + c % 3, c, num_examples=int(rng.integers(10, 100)), loss=float(rng.random()),
                     duration_s=float(rng.exponential(60.0)))
    return oort


def test_same_seed_and_observations_give_the_same_picks():
    a, b = learnt(), learnt()
    draws = [(rnd, attempt, rnd * 5000.0) for rnd in range(3, 20) for attempt in range(2)]
    assert [a.sample(r, 5, t, now=now) for r, t, now in draws] == [b.sample(r, 5, t, now=now) for r, t, now in draws]
    assert [a.sample(r, 5, t, now=0.0) for r, t, _ in draws] != [learnt(6).sample(r, 5, t, now=0.0)
                                                                 for r, t, _ in draws]


def test_a_resumed_sampler_picks_what_the_original_would_have():
    original = learnt()
    state = original.state()
    assert {k: v.dtype for k, v in state.items()} == {"utility": np.float64, "duration": np.float64,
                                                     "last_round": np.int64, "explored": np.bool_}
    resumed = OortSampler(50, FLEET, 5, explore=0.5)
    resumed.load_state({k: v.tolist() for k, v in state.items()})  # e.g. read back from a JSON checkpoint
    original.observe(9, 1, num_examples=10, loss=5.0, duration_s=1.0)  # state() was a copy
    resumed.observe(9, 1, num_examples=10, loss=5.0, duration_s=1.0)
    for rnd in range(10, 30):
        assert resumed.sample(rnd, 6, now=rnd * 4000.0) == original.sample(rnd, 6, now=rnd * 4000.0)


def test_a_state_for_another_fleet_is_refused_whole():
    oort = learnt()
    before = oort.state()
    bad = dict(before, duration=np.zeros(49))
    with pytest.raises(ValueError, match="'duration' has shape"):
        oort.load_state(bad)
    with pytest.raises(ValueError, match="lacks 'explored'"):
        oort.load_state({k: v for k, v in before.items() if k != "explored"})
    assert all(np.array_equal(oort.state()[k], before[k], equal_nan=k == "duration") for k in before)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError):
        OortSampler(5, UniformSystem(), cutoff=0.0)
    with pytest.raises(ValueError):
        OortSampler(5, UniformSystem()).sample(1, 0)
    with pytest.raises(ValueError):
        OortSampler(5, UniformSystem()).observe(1, 5, loss=1.0)


def test_oort_is_built_by_name():
    sampler = build_sampler("oort", 10, UniformSystem(), 1)
    assert isinstance(sampler, OortSampler) and sampler.stateful and sampler.seed == 1  # a checkpoint keeps it
