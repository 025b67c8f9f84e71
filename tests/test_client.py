import copy

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from fedstack.client import EvalResult, FitConfig, TorchTrainer, batch_order
from fedstack.data import ClientData


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 200), st.integers(1, 64), st.integers(1, 3), st.integers(0, 2**31))
def test_batch_order_visits_each_example_once_per_epoch(n, batch_size, epochs, seed):
    indices = np.arange(100, 100 + n)
    batches = batch_order(indices, FitConfig(epochs=epochs, batch_size=batch_size, seed=seed))
    seen = np.concatenate(batches)
    assert len(batches) == epochs * -(-n // batch_size)
    for e in range(epochs):
        assert sorted(seen[e * n:(e + 1) * n]) == list(indices)


def test_batch_order_local_steps_is_exact_and_seeded():
    idx = np.arange(10)
    batches = batch_order(idx, FitConfig(local_steps=7, batch_size=4, seed=1))
    assert len(batches) == 7
    again = batch_order(idx, FitConfig(local_steps=7, batch_size=4, seed=1))
    assert all((a == b).all() for a, b in zip(batches, again))


def _linear_trainer():
    torch.manual_seed(0)
    return TorchTrainer(torch.nn.Linear(3, 2))


def test_params_round_trip_through_the_flat_buffer():
    trainer = _linear_trainer()
    p = np.arange(trainer.spec.size, dtype=np.float32)
    trainer.set_params(p)
    np.testing.assert_array_equal(trainer.get_params(), p)
    # the module itself sees the values: weight is the first 6, bias the last 2
    np.testing.assert_array_equal(trainer.model.bias.detach().numpy(), [6, 7])


def test_fit_returns_local_minus_global_of_one_sgd_step():
    trainer = _linear_trainer()
    x = np.array([[1.0, 2.0, 3.0]], dtype=np.float32)
    y = np.array([1])
    data = ClientData(x, y, np.array([0]), np.array([], dtype=np.int64))
    params = np.zeros(trainer.spec.size, dtype=np.float32)
    result = trainer.fit(params, data, FitConfig(batch_size=1, lr=0.5))
    # zero weights: softmax = [.5, .5]; grad wrt logits = [.5, -.5]; W grad = outer(g, x); b grad = g
    expected_w = -0.5 * np.outer([0.5, -0.5], x[0])
    expected_b = -0.5 * np.array([0.5, -0.5])
    np.testing.assert_allclose(result.update, np.concatenate([expected_w.ravel(), expected_b]), rtol=1e-6)
    assert result.num_examples == 1


def test_evaluate_sums_loss_and_counts_correct():
    trainer = _linear_trainer()
    params = np.zeros(trainer.spec.size, dtype=np.float32)
    params[-2:] = [1.0, 0.0]  # bias favours class 0
    x = np.ones((5, 3), dtype=np.float32)
    y = np.array([0, 0, 1, 0, 1])
    r = trainer.evaluate(params, x, y)
    assert (r.correct, r.examples) == (3, 5)
    expected_loss = 3 * np.log(1 + np.exp(-1)) + 2 * np.log(1 + np.exp(1))
    assert r.loss_sum == pytest.approx(expected_loss, rel=1e-6)


def test_eval_results_add_up():
    total = EvalResult(1.0, 2, 4) + EvalResult(3.0, 1, 4)
    assert (total.loss, total.accuracy) == (0.5, 3 / 8)


def _digits_like(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 10, n)
    return x, y


def test_builtin_sgd_matches_torch_optim_sgd_bit_for_bit():
    from fedstack.models import build_model

    x, y = _digits_like()
    data = ClientData(x, y, np.arange(len(y)), np.array([], dtype=np.int64))
    torch.manual_seed(1)
    ours = TorchTrainer(build_model("cnn", (1, 8, 8), 10))
    reference = TorchTrainer(build_model("cnn", (1, 8, 8), 10),
                             optimizer=lambda params, lr: torch.optim.SGD(params, lr=lr))
    params = ours.get_params()
    config = FitConfig(epochs=2, batch_size=8, lr=0.1, seed=3)
    a = ours.fit(params, data, config).update
    b = reference.fit(params, data, config).update
    assert np.array_equal(a, b) and np.abs(a).sum() > 0


def test_jit_evaluation_agrees_with_eager():
    from fedstack.models import build_model

    x, y = _digits_like(250)
    torch.manual_seed(2)
    model = build_model("cnn", (1, 8, 8), 10)
    eager, jit = TorchTrainer(copy.deepcopy(model)), TorchTrainer(model, jit_eval=True)
    params = eager.get_params()
    e, j = eager.evaluate(params, x, y), jit.evaluate(params, x, y)
    assert e.correct == j.correct and e.examples == j.examples == 250
    assert j.loss_sum == pytest.approx(e.loss_sum, rel=1e-5)
    # a new parameter vector rebuilds the frozen copy instead of reusing stale weights
    shifted = params.copy()
    shifted[-10:] += np.arange(10, dtype=np.float32) * 5
    assert jit.evaluate(shifted, x, y).loss_sum == pytest.approx(eager.evaluate(shifted, x, y).loss_sum, rel=1e-5)


def test_batchnorm_statistics_travel_in_the_vector_and_decide_evaluation():
    import torch

    from fedstack.client import FitConfig, TorchTrainer
    from fedstack.data import ClientData

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    trainer = TorchTrainer(model)
    weights = sum(p.numel() for p in model.parameters())
    start = trainer.get_params()
    assert start.size == weights + 8  # running_mean and running_var, not num_batches_tracked
    np.testing.assert_array_equal(start[weights:], np.r_[np.zeros(4), np.ones(4)])
    rng = np.random.default_rng(0)
    x, y = (rng.normal(5.0, 2.0, (64, 3))).astype(np.float32), rng.integers(0, 2, 64)
    result = trainer.fit(start, ClientData(x, y, np.arange(64), np.zeros(0, np.int64)), FitConfig(lr=0.01))
    assert np.abs(result.update[weights:]).max() > 0.1  # the statistics moved, and are part of the update
    shifted = start.copy()
    shifted[weights:weights + 4] = 100.0  # another running mean: evaluation must use the vector's
    assert trainer.evaluate(start, x, y).loss_sum != trainer.evaluate(shifted, x, y).loss_sum


def _head_case(*body):
    torch.manual_seed(0)
    from fedstack.personal import head_split

    trainer = TorchTrainer(torch.nn.Sequential(*body, torch.nn.Linear(5, 3)))
    head = head_split(trainer.spec).mask()  # the last Linear's weight and bias
    assert head.sum() == 5 * 3 + 3
    rng = np.random.default_rng(0)
    data = ClientData(rng.normal(size=(40, 4)).astype(np.float32), rng.integers(0, 3, 40), np.arange(30),
                      np.arange(30, 40))
    return trainer, head, data


def test_fit_head_trains_the_head_on_features_computed_once_as_a_frozen_body_would():
    from fedstack.personal import Freeze, head_split

    trainer, head, data = _head_case(torch.nn.Linear(4, 5), torch.nn.ReLU())
    start = trainer.get_params()
    config = FitConfig(epochs=3, batch_size=8, lr=0.3, seed=5)
    fast = trainer.fit_head(start, data, config, head)
    split = head_split(trainer.spec)
    frozen = trainer.fit(start, data, FitConfig(epochs=3, batch_size=8, lr=0.3, seed=5,
                                                terms=(Freeze(split, personal=False),)))
    assert np.all(fast.update[~head] == 0) and np.any(fast.update[head] != 0)
    np.testing.assert_allclose(fast.update, frozen.update, rtol=1e-6, atol=1e-7)
    assert fast.metrics["steps"] == frozen.metrics["steps"] == 3 * 4
    assert fast.metrics["train_loss"] == pytest.approx(frozen.metrics["train_loss"], rel=1e-6)


@pytest.mark.parametrize("case", ["dropout", "batchnorm", "not_trailing", "proximal", "adam"])
def test_fit_head_declines_where_features_computed_once_would_differ(case):
    body = {"dropout": (torch.nn.Linear(4, 5), torch.nn.Dropout(0.5)),
            "batchnorm": (torch.nn.Linear(4, 5), torch.nn.BatchNorm1d(5))}.get(case, (torch.nn.Linear(4, 5),))
    trainer, head, data = _head_case(*body)
    config = FitConfig(epochs=1, batch_size=8, lr=0.3, mu=0.1 if case == "proximal" else 0.0)
    if case == "not_trailing":
        head = ~head
    if case == "adam":
        trainer.optimizer = "adam"
    assert trainer.fit_head(trainer.get_params(), data, config, head) is None
