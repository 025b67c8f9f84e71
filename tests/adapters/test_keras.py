"""Keras 3 models as fedstack trainers, on Keras's torch backend (fedstack.adapters.keras)."""

import functools
import runpy
from pathlib import Path

import numpy as np
import pytest

# the adapter first: importing it sets KERAS_BACKEND=torch (it imports no Keras), without which Keras 3
# falls back to TensorFlow
from fedstack.adapters.keras import KerasTrainer, import_keras

pytest.importorskip("keras")  # the `keras` extra

from fedstack import FitConfig  # noqa: E402
from fedstack.data import ClientData, FederatedDataset  # noqa: E402
from fedstack.engine import make_engine  # noqa: E402
from fedstack.errors import FedstackError  # noqa: E402
from fedstack.experiment import simulate  # noqa: E402

keras = import_keras()
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "keras_mlp.py"


def _linear():
    return keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])


def _mlp(features=8, classes=3):
    """Batch normalisation (non-trainable moving statistics) and dropout (a random layer): both must travel
    or be reseeded for local and pool runs to agree."""
    return keras.Sequential([keras.Input((features,)), keras.layers.Dense(16, activation="relu"),
                             keras.layers.BatchNormalization(), keras.layers.Dropout(0.2),
                             keras.layers.Dense(classes)])


def test_one_sgd_step_of_a_dense_layer_by_hand():
    # p = wx + b at w = 1, b = 0 on x = (2, 1), y = (0, 1): errors e = (2, 0); Keras's MSE is the batch mean
    # of e², 2; its gradient is mean(2ex) = 4 for w and mean(2e) = 2 for b; one SGD step at lr 0.1
    trainer = KerasTrainer(_linear, task="regression")
    data = ClientData(np.array([[2.0], [1.0]], np.float32), np.array([0.0, 1.0], np.float32), np.array([0, 1]),
                      np.array([], np.int64))
    x, y, w, b, lr = data.x[:, 0], data.y, np.float32(1), np.float32(0), np.float32(0.1)
    e = w * x + b - y
    grad_w, grad_b = np.mean(2 * e * x), np.mean(2 * e)
    assert (grad_w, grad_b) == (4.0, 2.0)
    result = trainer.fit(np.array([w, b], np.float32), data, FitConfig(local_steps=1, batch_size=2, lr=0.1))
    assert result.update == pytest.approx([-lr * grad_w, -lr * grad_b], abs=1e-6)
    assert result.metrics == {"train_loss": pytest.approx(2.0), "steps": 1} and result.num_examples == 2
    by_name = KerasTrainer(_linear, loss="mean_squared_error", task="regression")  # wrapped as compile() wraps it
    same = by_name.fit(np.array([w, b], np.float32), data, FitConfig(local_steps=1, batch_size=2, lr=0.1))
    assert np.array_equal(same.update, result.update)
    new = np.array([w, b], np.float32) + result.update  # 0.6x − 0.2: errors (1, −0.6)
    evaluated = trainer.evaluate(new, data.x, data.y)
    assert evaluated.loss == pytest.approx((1.0 ** 2 + 0.6 ** 2) / 2, abs=1e-6) and evaluated.accuracy is None


def test_a_zero_classifier_scores_log_of_the_classes_and_counts_top1_and_top3():
    def zeros():
        return keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, kernel_initializer="zeros")])

    trainer = KerasTrainer(zeros)
    assert trainer.get_params().shape == (3 * 4 + 4,) and not trainer.get_params().any()
    x, y = np.ones((5, 3), np.float32), np.array([0, 1, 2, 3, 3])
    result = trainer.evaluate(trainer.get_params(), x, y)
    assert result.loss == pytest.approx(np.log(4)) and result.examples == 5
    assert result.correct == 1 and result.correct_top3 == 3  # all ties: argmax 0; the first three classes
    assert trainer.evaluate(trainer.get_params(), x[:0], y[:0]).examples == 0


def test_params_round_trip_and_moving_statistics_travel():
    trainer = KerasTrainer(_mlp, seed=3)
    names = trainer.spec.names
    assert trainer.spec.size == trainer.model.count_params()  # every weight, trainable or not
    assert any(n.endswith("moving_mean") for n in names) and not any("seed_generator" in n for n in names)
    vector = np.random.default_rng(0).normal(size=trainer.spec.size).astype(np.float32)
    trainer.set_params(vector)
    assert np.array_equal(trainer.get_params(), vector)
    with pytest.raises(ValueError):
        trainer.set_params(vector[1:])
    rng = np.random.default_rng(1)
    data = ClientData(rng.normal(size=(32, 8)).astype(np.float32), rng.integers(0, 3, 32), np.arange(32),
                      np.array([], np.int64))
    update = trainer.fit(trainer.get_params(), data, FitConfig(local_steps=2, batch_size=16, lr=0.1)).update
    a, b = trainer.spec.offsets()[names.index(next(n for n in names if n.endswith("moving_mean")))]
    assert update[a:b].any()  # a training step moved the moving mean, and the update carries it


def test_same_seed_same_bits_whatever_the_trainer_did_before():
    import torch

    numpy_state = np.random.get_state()[1].copy()
    first, second = KerasTrainer(_mlp, seed=7), KerasTrainer(_mlp, seed=7)
    assert np.array_equal(first.get_params(), second.get_params())
    assert not np.array_equal(first.get_params(), KerasTrainer(_mlp, seed=8).get_params())
    # seed=None: torch's generator decides, as fedstack seeds it from the run seed for a starting model
    starts = []
    for _ in range(2):
        torch.manual_seed(11)
        starts.append(KerasTrainer(_mlp).get_params())
    assert np.array_equal(*starts)
    rng = np.random.default_rng(2)
    data = ClientData(rng.normal(size=(40, 8)).astype(np.float32), rng.integers(0, 3, 40), np.arange(40),
                      np.array([], np.int64))
    params, config = first.get_params(), FitConfig(epochs=2, batch_size=8, lr=0.1, seed=5)
    once = first.fit(params, data, config).update
    first.fit(params, data, FitConfig(seed=9))  # another client in between: dropout's generator moves on
    assert np.array_equal(first.fit(params, data, config).update, once)
    assert np.array_equal(second.fit(params, data, config).update, once)
    other = second.fit(params, data, FitConfig(epochs=2, batch_size=8, lr=0.1, seed=6)).update
    assert not np.array_equal(other, once)
    adam = KerasTrainer(_mlp, optimizer="adam", seed=7)  # a fresh optimizer every fit: no moments carried over
    assert np.array_equal(adam.fit(params, data, config).update, adam.fit(params, data, config).update)
    assert np.array_equal(np.random.get_state()[1], numpy_state)  # the process's own generators are left alone


def test_refuses_a_keras_on_another_backend_and_a_model_without_weights(monkeypatch):
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with pytest.raises(FedstackError, match="torch backend"):
        KerasTrainer(_linear)
    monkeypatch.undo()
    with pytest.raises(FedstackError, match="keras.Input"):
        KerasTrainer(lambda: keras.Sequential([keras.layers.Dense(1)]))
    with pytest.raises(FedstackError, match="task"):
        KerasTrainer(_linear, task="ranking")


def _blobs(seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=2.0, size=(3, 8))
    y = rng.integers(0, 3, 400)
    x = (centres[y] + rng.normal(size=(400, 8))).astype(np.float32)
    return FederatedDataset.from_arrays(x[:300], y[:300], x[300:], y[300:], num_clients=6)


def test_a_federated_keras_mlp_learns_with_the_same_bits_on_local_and_pool():
    data = _blobs()
    factory = functools.partial(KerasTrainer, _mlp, seed=0)  # picklable: pool workers build their own
    runs = [simulate(factory, data, factory().get_params(), rounds=3, clients_per_round=3, engine=engine)
            for engine in ("local", make_engine("pool", 2))]
    assert np.array_equal(runs[0].params, runs[1].params)
    accuracies = [r["test_accuracy"] for r in runs[0].rounds]
    assert accuracies[-1] > 0.8 > 1 / 3 and runs[0].rounds[-1]["test_loss"] < runs[0].rounds[0]["test_loss"]


def test_the_example_learns_digits():
    history = runpy.run_path(str(EXAMPLE))["main"](rounds=6)
    assert history.rounds[-1]["test_accuracy"] > 0.8
