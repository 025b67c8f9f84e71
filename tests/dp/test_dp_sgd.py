"""DP-SGD in TorchTrainer (record-level DP, Abadi et al. 2016, through Opacus) and the RecordLevelLedger."""

import math

import numpy as np
import pytest
import torch

from fedstack.client import FitConfig, TorchTrainer
from fedstack.data import ClientData
from fedstack.plan import make_trainer
from fedstack.models import build_model
from fedstack.dp.accounting import Accountant, RecordLevelLedger
from fedstack.errors import FedstackError

FEATURES, CLASSES = 4, 3


def _client(n, seed=0, scale=1.0):
    """n synthetic examples of FEATURES features and CLASSES classes, all for training."""
    rng = np.random.default_rng(seed)
    x = (scale * rng.normal(size=(n, FEATURES))).astype(np.float32)
    y = rng.integers(0, CLASSES, n)
    return ClientData(x, y, np.arange(n), np.array([], dtype=np.int64))


def _logreg(optimizer="sgd"):
    return make_trainer("logreg", (FEATURES,), CLASSES, optimizer)


def _start(trainer, seed=1):
    """Non-zero parameters, so that examples' gradients differ in size."""
    return np.random.default_rng(seed).normal(size=trainer.spec.size).astype(np.float32)


def _per_example_grads(params, data):
    """Each training example's gradient of its own loss, one example at a time with plain autograd (float64)."""
    ref = _logreg()
    ref.set_params(params)
    grads = []
    for i in data.train_idx:
        ref.model.zero_grad()
        x, y = torch.from_numpy(data.x[i:i + 1]), torch.from_numpy(data.y[i:i + 1])
        torch.nn.functional.cross_entropy(ref.model(x), y).backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in ref.model.parameters()]).double().numpy())
    return np.array(grads)


def _clipped_mean(params, data, clip, batch_size):
    """Σᵢ clip(gᵢ, C) / B, with the textbook clip gᵢ · min(1, C / ‖gᵢ‖) (Abadi et al. 2016, Algorithm 1)."""
    grads = _per_example_grads(params, data)
    norms = np.linalg.norm(grads, axis=1)
    return (grads * np.minimum(1.0, clip / norms)[:, None]).sum(axis=0) / batch_size


def test_one_noise_free_step_is_the_mean_of_clipped_per_example_gradients():
    trainer, data = _logreg(), _client(6)
    params = _start(trainer)
    # 6 examples, batch_size 8: one step over all of them, divided by the fixed 8, not by 6.
    config = FitConfig(local_steps=1, batch_size=8, lr=0.5, dp_sgd=True, dp_noise_multiplier=0.0,
                       dp_max_grad_norm=1.5)
    norms = np.linalg.norm(_per_example_grads(params, data), axis=1)
    assert norms.min() < 1.5 < norms.max()  # some examples are clipped, some are not
    result = trainer.fit(params, data, config)
    expected = -0.5 * _clipped_mean(params, data, 1.5, 8)
    np.testing.assert_allclose(result.update, expected, rtol=1e-5, atol=1e-7)
    assert result.metrics["dp_steps"] == 1 and result.metrics["dp_sample_rate"] == 1.0


def test_noise_has_std_sigma_c_lr_over_b_per_coordinate():
    torch.manual_seed(0)
    trainer = TorchTrainer(build_model("mlp", (FEATURES,), CLASSES))  # ~42k parameters: ~42k noise draws
    data, params = _client(10), trainer.get_params()
    z, clip, lr, batch = 1.3, 0.7, 0.1, 16
    base = FitConfig(local_steps=1, batch_size=batch, lr=lr, seed=5, dp_sgd=True, dp_max_grad_norm=clip)
    clean = trainer.fit(params, data, FitConfig(**{**base.__dict__, "dp_noise_multiplier": 0.0})).update
    noisy = trainer.fit(params, data, FitConfig(**{**base.__dict__, "dp_noise_multiplier": z})).update
    deviation = (noisy - clean).astype(np.float64)
    expected = z * clip * lr / batch
    # The std of 42k normal draws is within 2% of the truth with probability ≈ 1 − 10⁻⁸.
    assert deviation.std() == pytest.approx(expected, rel=0.02)
    assert abs(deviation.mean()) < 5 * expected / math.sqrt(deviation.size)


def test_a_huge_example_moves_the_update_by_at_most_c():
    trainer = _logreg()
    params = _start(trainer)
    small = _client(4)
    huge = ClientData(np.concatenate([small.x, 1e4 * np.ones((1, FEATURES), np.float32)]),
                      np.concatenate([small.y, [0]]), np.arange(5), np.array([], dtype=np.int64))
    lr, clip, batch = 0.5, 1.0, 8
    config = FitConfig(local_steps=1, batch_size=batch, lr=lr, dp_sgd=True, dp_noise_multiplier=0.0,
                       dp_max_grad_norm=clip)
    influence = np.linalg.norm(trainer.fit(params, huge, config).update - trainer.fit(params, small, config).update)
    assert influence <= lr * clip / batch * (1 + 1e-5)
    assert influence >= 0.99 * lr * clip / batch  # it was clipped to C, not dropped
    plain = FitConfig(local_steps=1, batch_size=batch, lr=lr)
    unclipped = np.linalg.norm(trainer.fit(params, huge, plain).update - trainer.fit(params, small, plain).update)
    assert unclipped > 100 * influence  # without DP-SGD that one example dominates


def test_same_config_gives_the_same_bits_and_another_seed_other_noise():
    data = _client(40)
    first = _logreg()
    params = _start(first)
    config = FitConfig(epochs=2, batch_size=8, lr=0.1, seed=11, dp_sgd=True, dp_noise_multiplier=1.0)
    a = first.fit(params, data, config).update
    b = _logreg().fit(params, data, config).update  # a fresh trainer, as another worker would hold
    c = first.fit(params, data, config).update  # the same trainer again
    assert a.tobytes() == b.tobytes() == c.tobytes()
    other = first.fit(params, data, FitConfig(**{**config.__dict__, "seed": 12})).update
    assert np.abs(other - a).max() > 1e-3


def test_trainer_is_reusable_between_dp_and_plain_fits():
    data, params = _client(30), _start(_logreg())
    dp = FitConfig(epochs=1, batch_size=8, lr=0.1, seed=3, dp_sgd=True, dp_noise_multiplier=0.8)
    plain = FitConfig(epochs=1, batch_size=8, lr=0.1, seed=3)
    fresh_dp, fresh_plain = _logreg().fit(params, data, dp), _logreg().fit(params, data, plain)

    worker = _logreg()
    for config, fresh in [(dp, fresh_dp), (plain, fresh_plain), (dp, fresh_dp), (plain, fresh_plain)]:
        result = worker.fit(params, data, config)
        assert result.update.tobytes() == fresh.update.tobytes()
        assert result.metrics.keys() == fresh.metrics.keys()
        # nothing of Opacus stays behind: no per-example gradients, no hooks, no saved activations
        for p in worker.model.parameters():
            assert p.grad is None or not config.dp_sgd
            assert not any(hasattr(p, a) for a in ("grad_sample", "summed_grad", "_forward_counter"))
        for m in worker.model.modules():
            assert not m._forward_hooks and not m._backward_hooks and not hasattr(m, "activations")
    # evaluation (a traced copy of the model: make_trainer sets jit_eval) still works after DP-SGD
    assert worker.evaluate(params, data.x, data.y).examples == 30
    # and a non-DP fit on the trainer looks like it always did
    assert np.isfinite(fresh_plain.metrics["train_loss"]) and "dp_steps" not in fresh_plain.metrics


def test_metrics_report_steps_and_sample_rate_but_not_the_training_loss():
    config = FitConfig(epochs=2, batch_size=8, lr=0.1, dp_sgd=True)
    metrics = _logreg().fit(_start(_logreg()), _client(20), config).metrics
    assert metrics["dp_steps"] == metrics["steps"] == 2 * 3  # 20 examples: batches of 8, 8, 4, twice
    assert metrics["dp_sample_rate"] == pytest.approx(8 / 20)
    assert math.isnan(metrics["train_loss"])  # an un-noised statistic of the records: not released


def test_fedprox_term_is_added_after_clipping_and_noise():
    trainer, data = _logreg(), _client(6)
    w0 = _start(trainer)
    lr, mu, clip, batch = 0.5, 2.0, 0.5, 8
    config = FitConfig(local_steps=2, batch_size=batch, lr=lr, mu=mu, dp_sgd=True, dp_noise_multiplier=0.0,
                       dp_max_grad_norm=clip)
    result = trainer.fit(w0, data, config)
    # two steps over all 6 examples; the proximal gradient mu·(w − w0) is not clipped with the examples'
    w1 = w0 - lr * _clipped_mean(w0, data, clip, batch)
    w2 = w1 - lr * (_clipped_mean(w1.astype(np.float32), data, clip, batch) + mu * (w1 - w0))
    np.testing.assert_allclose(result.update, w2 - w0, rtol=1e-4, atol=1e-6)


def test_dp_optimizer_wraps_adam_too():
    trainer, data = _logreg("adam"), _client(6)
    params = _start(trainer)
    config = FitConfig(local_steps=1, batch_size=8, lr=0.01, dp_sgd=True, dp_noise_multiplier=0.0,
                       dp_max_grad_norm=0.5)
    # Adam's first step is lr · m̂ / (√v̂ + ε) = lr · g / (|g| + ε): −lr · sign of the clipped mean
    expected = -0.01 * np.sign(_clipped_mean(params, data, 0.5, 8))
    np.testing.assert_allclose(trainer.fit(params, data, config).update, expected, rtol=1e-4, atol=1e-7)


def test_unsupported_combinations_are_refused():
    trainer, data = _logreg(), _client(6)
    params = _start(trainer)
    with pytest.raises(ValueError, match="SCAFFOLD"):
        trainer.fit(np.concatenate([params, params]), data, FitConfig(dp_sgd=True, scaffold=True))
    # refused where the config is made (FedstackError), as the config's client.* keys are
    with pytest.raises(FedstackError, match="dp_max_grad_norm"):
        trainer.fit(params, data, FitConfig(dp_sgd=True, dp_max_grad_norm=0.0))
    with pytest.raises(FedstackError, match="dp_noise_multiplier"):
        trainer.fit(params, data, FitConfig(dp_sgd=True, dp_noise_multiplier=-1.0))
    lstm = TorchTrainer(build_model("char_lstm", (5,), 7))
    tokens = ClientData(np.zeros((4, 5), np.int64), np.zeros((4, 5), np.int64), np.arange(4),
                        np.array([], dtype=np.int64))
    with pytest.raises(ValueError, match="LSTM"):
        lstm.fit(lstm.get_params(), tokens, FitConfig(dp_sgd=True))
    # the refusals left the trainer as it was
    assert trainer.fit(params, data, FitConfig(local_steps=1)).metrics["steps"] == 1


def test_unseeded_noise_differs_between_equal_fits():
    data, config = _client(12), FitConfig(local_steps=2, batch_size=4, dp_sgd=True)
    trainer = make_trainer("logreg", (FEATURES,), CLASSES, "sgd")
    trainer.dp_seeded_noise = False  # a deployed client: the seed is known to the server
    params = _start(trainer)
    a, b = trainer.fit(params, data, config).update, trainer.fit(params, data, config).update
    assert np.abs(a - b).max() > 1e-3


def test_secure_mode_needs_torchcsprng():
    pytest.importorskip("opacus")
    try:
        import torchcsprng  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("torchcsprng is installed")
    trainer = _logreg()
    trainer.dp_secure_mode = True
    with pytest.raises(ImportError, match="torchcsprng"):
        trainer.fit(_start(trainer), _client(6), FitConfig(dp_sgd=True))
    assert not any(hasattr(p, "grad_sample") for p in trainer.model.parameters())


# -- RecordLevelLedger ---------------------------------------------------------------------------------


def test_ledger_epsilon_is_the_accountants_for_the_same_steps():
    ledger = RecordLevelLedger(5, delta=1e-5)
    ledger.add(3, 10, 0.1, 1.1)
    ledger.add(3, 5, 0.1, 1.1)
    reference = Accountant("rdp", "poisson", delta=1e-5)
    reference.step(1.1, 0.1, count=15)
    assert ledger.epsilon(3) == reference.epsilon()
    assert ledger.steps[3] == 15 and ledger.epsilon(0) == 0.0


def test_ledger_epsilon_grows_with_steps_and_equal_clients_share_one_computation():
    ledger = RecordLevelLedger(4, delta=1e-5)
    previous = 0.0
    for _ in range(4):
        ledger.add(1, 20, 0.05, 1.0)
        assert ledger.epsilon(1) > previous
        previous = ledger.epsilon(1)
    for client in (0, 2):
        ledger.add(client, 80, 0.05, 1.0)
    eps = ledger.epsilons()
    assert eps[0] == eps[1] == eps[2] == previous and eps[3] == 0.0
    assert len(ledger._cache) == 4  # 20, 40, 60, 80 steps: clients 0 and 2 reused client 1's
    ledger.add(3, 1, 0.05, 0.0)
    assert ledger.epsilon(3) == math.inf  # no noise: no privacy


def test_ledger_refuses_a_client_changing_its_kind_of_step():
    ledger = RecordLevelLedger(2, delta=1e-5)
    ledger.add(0, 10, 0.1, 1.0)
    with pytest.raises(ValueError, match="sample rate"):
        ledger.add(0, 10, 0.2, 1.0)
    with pytest.raises(ValueError):
        ledger.add(2, 10, 0.1, 1.0)  # no such client
    assert ledger.steps.tolist() == [10, 0]


def test_ledger_state_round_trip():
    ledger = RecordLevelLedger(3, delta=1e-6)
    ledger.add(0, 7, 0.25, 0.9)
    ledger.add(2, 40, 1.0, 2.0)
    resumed = RecordLevelLedger(3, delta=1e-6)
    resumed.load_state({k: v.copy() for k, v in ledger.state().items()})
    for name, value in ledger.state().items():
        np.testing.assert_array_equal(resumed.state()[name], value)
    np.testing.assert_array_equal(resumed.epsilons(), ledger.epsilons())
    other = RecordLevelLedger(3, delta=1e-5)
    with pytest.raises(ValueError, match="delta"):
        other.load_state(ledger.state())
    assert other.steps.tolist() == [0, 0, 0]


def test_fit_metrics_feed_the_ledger():
    config = FitConfig(epochs=3, batch_size=8, lr=0.1, dp_sgd=True, dp_noise_multiplier=1.2)
    metrics = _logreg().fit(_start(_logreg()), _client(40), config).metrics
    ledger = RecordLevelLedger(1, delta=1e-5)
    ledger.add(0, metrics["dp_steps"], metrics["dp_sample_rate"], config.dp_noise_multiplier)
    reference = Accountant("rdp", "poisson", delta=1e-5)
    reference.step(1.2, 8 / 40, count=15)  # 3 epochs of 5 batches
    assert ledger.epsilon(0) == reference.epsilon()
