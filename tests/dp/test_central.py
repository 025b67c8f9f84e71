import numpy as np
import pytest

from fedstack.dp.accounting import Accountant
from fedstack.dp.central import AdaptiveClipping, CentralDP
from fedstack.strategy import ClientUpdate, FedAvg, Task


class DPFedAvg:
    """FedAvg after central DP's server step, as the round loop chains them (loop.core.RoundLoop.aggregate)."""

    def __init__(self, dp: CentralDP):
        self.dp, self.strategy = dp, FedAvg()

    def configure(self, round, params, ids):
        return [self.dp.configure(t) for t in self.strategy.configure(round, params, ids)]

    def aggregate(self, round, params, updates):
        return self.strategy.aggregate(round, params, self.dp.server_step(round, params, updates))

    # what the transform keeps: its ε, its clip norm, its state
    def epsilon(self):
        return self.dp.epsilon()

    def epsilon_after(self, rounds):
        return self.dp.epsilon_after(rounds)

    @property
    def clip_norm(self):
        return self.dp.clip_norm

    def state(self):
        return self.dp.state()

    def load_state(self, state):
        self.dp.load_state(state)


def _private(target_quantile=0.0, clip_count_stddev=0.0, **kwargs):
    options = dict(clip_norm=1.0, noise_multiplier=0.0, clients_per_round=4, population=100, seed=0,
                   adaptive=AdaptiveClipping(target_quantile, count_stddev=clip_count_stddev))
    options.update(kwargs)
    return DPFedAvg(CentralDP(**options))


def test_the_server_step_hands_the_strategy_one_noised_mean_of_weight_one_and_nothing_without_updates():
    dp = CentralDP(clip_norm=1.0, noise_multiplier=0.0, clients_per_round=4, population=100)
    (mean,) = dp.server_step(1, np.zeros(2, np.float32), [ClientUpdate(0, np.array([0.4, 0.8], np.float32), 9)])
    assert mean.num_examples == 1 and mean.update == pytest.approx([0.1, 0.2])
    spent = dp.epsilon()
    assert dp.server_step(2, np.zeros(2, np.float32), []) == [] and dp.epsilon() == spent  # no release, no cost
    assert dp.configure(Task(1, 3, FedAvg().fit)).config.clip_norm == 1.0


def test_without_noise_it_is_the_fixed_denominator_mean_of_clipped_updates():
    strategy = _private()
    params = np.zeros(2, np.float32)
    updates = [ClientUpdate(0, np.array([0.6, 0.8], np.float32), 500),
               ClientUpdate(1, np.array([0.0, 0.4], np.float32), 1)]
    # weight 1 each whatever their examples; divided by the 4 clients expected, not the 2 that came
    np.testing.assert_allclose(strategy.aggregate(1, params, updates), [0.15, 0.3], rtol=1e-6)


def test_central_noise_on_the_sum_has_std_z_times_c_over_the_denominator():
    strategy = _private(noise_multiplier=2.0, clip_norm=0.5, clients_per_round=4)
    size = 100_000
    new = strategy.aggregate(1, np.zeros(size, np.float32), [ClientUpdate(0, np.zeros(size, np.float32), 1)])
    assert abs(new.std() - 2.0 * 0.5 / 4) < 5 * 0.25 / np.sqrt(2 * size)
    again = _private(noise_multiplier=2.0, clip_norm=0.5, clients_per_round=4).aggregate(
        1, np.zeros(size, np.float32), [ClientUpdate(0, np.zeros(size, np.float32), 1)])
    np.testing.assert_array_equal(new, again)  # from the run seed: reproducible


def test_each_counted_round_steps_the_accountant_and_configure_sends_the_clip_norm():
    strategy = _private(noise_multiplier=1.0)
    reference = Accountant("rdp", "fixed", delta=1e-5, population=100)
    for rnd in (1, 2, 3):
        tasks = strategy.configure(rnd, np.zeros(2, np.float32), [3, 5])
        assert [t.config.clip_norm for t in tasks] == [1.0, 1.0]
        strategy.aggregate(rnd, np.zeros(2, np.float32), [ClientUpdate(3, np.zeros(2, np.float32), 1)])
        reference.step(1.0, clients_per_round=4)
        assert strategy.epsilon() == pytest.approx(reference.epsilon())
    assert strategy.epsilon_after(1) == pytest.approx(reference.epsilon_after(1))
    assert strategy.epsilon_after(1) > strategy.epsilon()


def test_state_round_trip_resumes_the_ledger_and_the_clip_norm():
    strategy = _private(noise_multiplier=1.0, target_quantile=0.5, clip_count_stddev=2.0)
    for rnd in (1, 2):
        strategy.aggregate(rnd, np.zeros(2, np.float32), [ClientUpdate(i, np.full(2, 5.0, np.float32), 1)
                                                          for i in range(4)])
    assert strategy.clip_norm != 1.0  # adaptive: moved
    restored = _private(noise_multiplier=1.0, target_quantile=0.5, clip_count_stddev=2.0)
    restored.load_state(strategy.state())
    assert restored.clip_norm == strategy.clip_norm and restored.epsilon() == strategy.epsilon()


def test_adaptive_clipping_grows_c_while_every_update_is_clipped_and_shrinks_it_when_none_is():
    grow = _private(noise_multiplier=0.0, target_quantile=0.5, clip_count_stddev=1e-9)
    big = [ClientUpdate(i, np.full(4, 1.0, np.float32) * 0.5, 1) for i in range(4)]  # norm 1.0 = C: clipped
    grow.aggregate(1, np.zeros(4, np.float32), big)
    # none below C: b̄ = 0, so C · exp(−0.2 · (0 − 0.5)) = e^0.1
    assert grow.clip_norm == pytest.approx(np.exp(0.1))
    shrink = _private(noise_multiplier=0.0, target_quantile=0.5, clip_count_stddev=1e-9)
    shrink.aggregate(1, np.zeros(4, np.float32), [ClientUpdate(i, np.zeros(4, np.float32), 1) for i in range(4)])
    assert shrink.clip_norm == pytest.approx(np.exp(-0.1))


def test_local_mode_accounts_for_the_busiest_client_without_amplification():
    strategy = _private(noise_multiplier=1.0, mode="local")
    for rnd in (1, 2, 3):
        strategy.aggregate(rnd, np.zeros(2, np.float32), [ClientUpdate(7, np.zeros(2, np.float32), 1)])
    busiest = Accountant("rdp", "poisson", delta=1e-5)
    busiest.step(1.0, 1.0, count=3)  # client 7 released three noised updates
    assert strategy.epsilon() == pytest.approx(busiest.epsilon())


def test_a_deployed_servers_noise_comes_from_the_os_not_the_seed():
    size = 10_000
    args = (1, np.zeros(size, np.float32), [ClientUpdate(0, np.zeros(size, np.float32), 1)])
    seeded = _private(noise_multiplier=1.0).aggregate(*args)
    drawn = [_private(noise_multiplier=1.0, seeded_noise=False).aggregate(*args) for _ in range(2)]
    assert not np.array_equal(drawn[0], seeded) and not np.array_equal(drawn[0], drawn[1])
    assert abs(drawn[0].std() - 1.0 / 4) < 5 * 0.25 / np.sqrt(2 * size)  # the same mechanism, other draws
