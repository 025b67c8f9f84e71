import logging
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedstack.sampling import AvailableSampler, UniformSampler, build_sampler, overselected
from fedstack.seeding import rng
from fedstack.systems import DAY_S, Availability, DeviceProfile, Fleet, UniformSystem, heterogeneous


def test_overselection_rounds_up_without_float_noise():
    assert overselected(10, 0.0) == 10
    assert overselected(10, 0.3) == 13  # (1 + 0.3) · 10 = 13.000000000000002 in floating point
    assert overselected(7, 0.5) == 11  # 10.5 → 11
    assert overselected(3, 1.0) == 6
    assert overselected(10, 0.01) == 11


def test_uniform_sampling_is_the_seeded_draw_it_always_was():
    sampler = UniformSampler(50, seed=3)
    expected = sorted(int(c) for c in rng(3, "sampling", 4).choice(50, size=10, replace=False))
    assert sampler.sample(4, 10) == expected
    retry = sorted(int(c) for c in rng(3, "sampling", 4, 1).choice(50, size=10, replace=False))
    assert sampler.sample(4, 10, attempt=1) == retry
    with pytest.raises(ValueError):
        sampler.sample(1, 51)


def test_available_sampling_with_everyone_online_is_uniform_sampling():
    uniform, available = UniformSampler(40, seed=9), AvailableSampler(40, UniformSystem(), seed=9)
    for rnd in range(1, 20):
        for attempt in range(3):
            assert available.sample(rnd, 7, attempt, now=rnd * 1000.0) == uniform.sample(rnd, 7, attempt)


def test_fewer_online_than_wanted_takes_them_all_and_says_so(caplog):
    online_late = Availability.intervals([(100, 200)])
    devices = [DeviceProfile(availability=online_late if i % 3 else Availability()) for i in range(9)]
    sampler = AvailableSampler(9, Fleet(devices), seed=0)
    with caplog.at_level(logging.INFO, logger="fedstack.sampling"):
        assert sampler.sample(1, 5, now=0.0) == [0, 3, 6]
    assert "3 clients online at t=0 s, fewer than the 5 wanted" in caplog.text
    assert len(sampler.sample(1, 5, now=150.0)) == 5
    nobody = AvailableSampler(2, Fleet([DeviceProfile(availability=online_late)] * 2))
    assert nobody.sample(1, 1, now=500.0) == []


def test_samplers_are_built_by_name():
    system = UniformSystem()
    assert isinstance(build_sampler("uniform", 10, system, 1), UniformSampler)
    assert isinstance(build_sampler("available", 10, system, 1), AvailableSampler)
    with pytest.raises(ValueError, match="unknown sampler 'bogus'"):
        build_sampler("bogus", 10, system, 1)


def test_excluding_nobody_draws_what_was_always_drawn():
    uniform, available = UniformSampler(50, seed=3), AvailableSampler(50, FLEET, seed=3)
    for rnd in range(1, 30):
        for attempt in range(2):
            expected = uniform.sample(rnd, 8, attempt)
            assert uniform.sample(rnd, 8, attempt, exclude=()) == expected
            assert uniform.sample(rnd, 8, attempt, exclude=set()) == expected
            assert uniform.sample(rnd, 8, attempt, exclude=[50, 99]) == expected  # not clients: nothing to exclude
            now = rnd * 3000.0
            assert available.sample(rnd, 8, attempt, now=now, exclude=[]) == available.sample(rnd, 8, attempt, now=now)


def test_uniform_sampling_cannot_ask_for_more_than_remain():
    sampler = UniformSampler(10, seed=0)
    assert sampler.sample(1, 7, exclude=[0, 1, 2]) == [3, 4, 5, 6, 7, 8, 9]
    with pytest.raises(ValueError, match="cannot sample 8 of 7 clients"):
        sampler.sample(1, 8, exclude=[0, 1, 2])


def test_available_sampling_takes_every_remaining_online_client_when_too_few(caplog):
    online_late = Availability.intervals([(100, 200)])
    devices = [DeviceProfile(availability=online_late if i % 3 else Availability()) for i in range(9)]
    sampler = AvailableSampler(9, Fleet(devices), seed=0)
    assert sampler.sample(1, 2, now=0.0, exclude=iter([3])) == [0, 6]  # online at t=0: 0, 3, 6
    with caplog.at_level(logging.INFO, logger="fedstack.sampling"):
        assert sampler.sample(1, 5, now=0.0, exclude=np.array([0, 6])) == [3]
    assert "1 client online and not excluded at t=0 s, fewer than the 5 wanted" in caplog.text


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**31), rnd=st.integers(1, 500), attempt=st.integers(0, 3),
       k=st.integers(1, 60), exclude=st.sets(st.integers(0, 59), max_size=60))
def test_uniform_sampling_never_draws_an_excluded_client(seed, rnd, attempt, k, exclude):
    sampler = UniformSampler(60, seed)
    if k > 60 - len(exclude):
        with pytest.raises(ValueError):
            sampler.sample(rnd, k, attempt, exclude=exclude)
        return
    chosen = sampler.sample(rnd, k, attempt, exclude=exclude)
    assert chosen == sorted(set(chosen)) and len(chosen) == k
    assert not set(chosen) & exclude
    assert all(isinstance(c, int) and 0 <= c < 60 for c in chosen)


def test_uniform_sampling_with_exclusions_is_uniform_over_the_rest():
    sampler, exclude = UniformSampler(20, seed=5), range(0, 20, 4)
    counts = np.zeros(20)
    for rnd in range(1, 2001):
        for c in sampler.sample(rnd, 3, exclude=exclude):
            counts[c] += 1
    rest = np.setdiff1d(np.arange(20), exclude)
    assert counts[list(exclude)].sum() == 0
    expected = 2000 * 3 / len(rest)
    assert np.abs(counts[rest] - expected).max() < 5 * np.sqrt(expected)


FLEET = heterogeneous(60, seed=11, diurnal=True, online_hours=5)


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**31), rnd=st.integers(1, 500), attempt=st.integers(0, 3),
       now=st.floats(0, 30 * DAY_S, allow_nan=False), k=st.integers(1, 60))
def test_the_available_sampler_never_picks_an_offline_client(seed, rnd, attempt, now, k):
    sampler = AvailableSampler(60, FLEET, seed)
    chosen = sampler.sample(rnd, k, attempt, now=now)
    online = FLEET.online_ids(now, 60)
    assert all(FLEET.online(c, now) for c in chosen)
    assert chosen == sorted(set(chosen))
    assert len(chosen) == min(k, len(online))
    assert chosen == sampler.sample(rnd, k, attempt, now=now)  # deterministic


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**31), rnd=st.integers(1, 500), attempt=st.integers(0, 3),
       now=st.floats(0, 30 * DAY_S, allow_nan=False), k=st.integers(1, 60),
       exclude=st.sets(st.integers(0, 59), max_size=60))
def test_the_available_sampler_never_picks_an_excluded_client(seed, rnd, attempt, now, k, exclude):
    sampler = AvailableSampler(60, FLEET, seed)
    chosen = sampler.sample(rnd, k, attempt, now=now, exclude=exclude)
    remaining = set(FLEET.online_ids(now, 60)) - exclude
    assert set(chosen) <= remaining
    assert chosen == sorted(set(chosen))
    assert len(chosen) == min(k, len(remaining))


def test_the_available_sampler_draws_uniformly_among_the_online():
    fleet = heterogeneous(30, seed=1, diurnal=True, online_hours=12)
    online = fleet.online_ids(0.0, 30)
    sampler = AvailableSampler(30, fleet, seed=2)
    counts = np.zeros(30)
    for rnd in range(1, 2001):
        for c in sampler.sample(rnd, 3, now=0.0):
            counts[c] += 1
    assert set(np.flatnonzero(counts)) == set(online)
    expected = 2000 * 3 / len(online)
    assert np.abs(counts[online] - expected).max() < 5 * np.sqrt(expected)


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**31), rnd=st.integers(1, 500), attempt=st.integers(0, 3), n=st.integers(1, 300),
       k=st.integers(1, 300), exclude=st.sets(st.integers(-5, 320), max_size=40))
def test_uniform_sampling_draws_what_a_draw_over_the_array_of_ids_draws(seed, rnd, attempt, n, k, exclude):
    population = np.setdiff1d(np.arange(n), list(exclude))
    if not 0 < k <= len(population):
        return
    stream = rng(seed, "sampling", *((rnd, attempt) if attempt else (rnd,)))
    expected = sorted(int(c) for c in stream.choice(population, size=k, replace=False))
    assert UniformSampler(n, seed).sample(rnd, k, attempt, exclude=exclude) == expected


def test_a_million_clients_are_sampled_in_o_of_k():
    n, exclude = 10**6, [0, 17, 999_999, 500_000]
    uniform = UniformSampler(n, seed=4)
    available = AvailableSampler(n, heterogeneous(n, seed=4), seed=4)  # no diurnal windows: everyone online
    start = time.perf_counter()
    for rnd in range(1, 101):
        chosen = uniform.sample(rnd, 100, exclude=exclude)
        assert len(set(chosen)) == 100 and 0 <= min(chosen) and max(chosen) < n and not set(chosen) & set(exclude)
        assert available.sample(rnd, 100, now=rnd * 60.0, exclude=exclude) == chosen
    assert time.perf_counter() - start < 1.0  # ~0.1 ms a draw; an array of the million ids costs ~2 ms
