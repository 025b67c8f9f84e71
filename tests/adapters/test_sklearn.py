"""scikit-learn's SGDClassifier / SGDRegressor as fedstack trainers (fedstack.adapters.sklearn)."""

import functools
import runpy
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import SGDClassifier, SGDRegressor

from fedstack import FitConfig
from fedstack.adapters.sklearn import SklearnTrainer
from fedstack.data import ClientData, FederatedDataset
from fedstack.experiment import simulate
from fedstack.engine import make_engine

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sklearn_sgd.py"


def test_one_sgd_step_of_a_regressor_by_hand():
    # squared error ½(wx + b − y)² at w = 1, b = 0, x = 2, y = 0: p − y = 2; w ← 1 − 0.1·2·2 = 0.6, b ← −0.2
    trainer = SklearnTrainer(SGDRegressor(penalty=None), num_features=1)
    data = ClientData(np.array([[2.0]], np.float32), np.array([0.0], np.float32), np.array([0]),
                      np.array([], np.int64))
    result = trainer.fit(np.array([1.0, 0.0], np.float32), data, FitConfig(local_steps=1, batch_size=1, lr=0.1))
    assert result.update == pytest.approx([0.6 - 1.0, -0.2], abs=1e-6)
    evaluated = trainer.evaluate(np.array([0.6, -0.2], np.float32), data.x, data.y)
    assert evaluated.loss == pytest.approx(1.0 ** 2) and evaluated.accuracy is None


def test_a_classifier_starts_at_zero_and_its_loss_is_log_of_the_classes_there():
    trainer = SklearnTrainer(SGDClassifier(loss="log_loss"), num_features=3, classes=[0, 1, 2, 3])
    assert trainer.get_params().shape == (4 * 3 + 4,)
    x, y = np.ones((5, 3), np.float32), np.array([0, 1, 2, 3, 3])
    assert trainer.evaluate(trainer.get_params(), x, y).loss == pytest.approx(np.log(4))


def _regression(seed=0):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=5)
    x = rng.normal(size=(600, 5)).astype(np.float32)
    y = (x @ w + 0.05 * rng.normal(size=600)).astype(np.float32)
    return FederatedDataset.from_arrays(x[:500], y[:500], x[500:], y[500:], num_clients=5, targets="values")


def test_a_federated_sgd_regressor_learns_with_the_same_bits_on_local_and_pool():
    data = _regression()
    factory = functools.partial(SklearnTrainer, SGDRegressor(penalty=None), 5)
    runs = [simulate(factory, data, np.zeros(6, np.float32), strategy=None, rounds=3, clients_per_round=3,
                     engine=engine) for engine in ("local", make_engine("pool", 2))]
    assert np.array_equal(runs[0].params, runs[1].params)
    losses = [r["test_loss"] for r in runs[0].rounds]
    start = float(np.mean(data.y_test.astype(np.float64) ** 2))  # the zero model's squared error
    assert losses[-1] < 0.01 * start and losses[-1] <= losses[0] and runs[0].rounds[-1]["test_accuracy"] is None


def test_the_example_learns_digits():
    history = runpy.run_path(str(EXAMPLE))["main"](rounds=8)
    assert history.rounds[-1]["test_accuracy"] > 0.8
