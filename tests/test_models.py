"""The models of build_model: the sequence LSTMs (char_lstm, word_lstm) and their contract."""

import pickle

import numpy as np
import pytest
import torch

from fedstack.client import FitConfig, TorchTrainer
from fedstack.data import FederatedDataset
from fedstack.models import MODELS, SEQUENCE_MODELS, build_model

# nn.LSTM's own argument checks compare traced sizes; the trace is still general (checked below).
pytestmark = pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::DeprecationWarning")


def lstm_params(inputs: int, hidden: int) -> int:
    """One LSTM layer: 4 gates, each with input and recurrent weights and two biases (b_ih, b_hh)."""
    return 4 * hidden * (inputs + hidden) + 2 * 4 * hidden


@pytest.mark.parametrize("name,classes,window", [("char_lstm", 81, 80), ("word_lstm", 5001, 20)])
def test_sequence_models_give_logits_per_position(name, classes, window):
    torch.manual_seed(0)
    model = build_model(name, (window,), classes)
    x = torch.randint(0, classes, (3, window))
    assert model(x).shape == (3, window, classes)
    assert model(x[:, :7]).shape == (3, 7, classes)  # any sequence length
    assert name in MODELS


def test_parameter_counts_by_hand():
    c = 81  # char_lstm: Embedding(81, 8) → LSTM(8, 256) → LSTM(256, 256) → Linear(256, 81)
    char = c * 8 + lstm_params(8, 256) + lstm_params(256, 256) + 256 * c + c
    assert char == 820_185
    assert sum(p.numel() for p in build_model("char_lstm", (80,), c).parameters()) == char
    v = 5001  # word_lstm: Embedding(5001, 64) → LSTM(64, 128) → Linear(128, 5001)
    word = v * 64 + lstm_params(64, 128) + 128 * v + v
    assert word == 1_064_521
    assert sum(p.numel() for p in build_model("word_lstm", (20,), v).parameters()) == word
    assert SEQUENCE_MODELS == {"char_lstm": (8, 256, 2), "word_lstm": (64, 128, 1)}


@pytest.mark.parametrize("name,classes", [("char_lstm", 81), ("word_lstm", 301)])
def test_jit_trace_gives_the_same_output(name, classes):
    torch.manual_seed(1)
    model = build_model(name, (20,), classes).eval()
    x = torch.randint(0, classes, (5, 20))
    with torch.no_grad():
        want = model(x)
        traced = torch.jit.trace(model, x[:1])  # traced on one sequence, run on a batch, as the trainer does
        torch.testing.assert_close(traced(x), want, rtol=0, atol=0)
        frozen = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
        torch.testing.assert_close(frozen(x), want, rtol=1e-5, atol=1e-5)


def test_models_pickle_and_keep_their_weights():
    model = build_model("word_lstm", (20,), 50)
    copy = pickle.loads(pickle.dumps(model))
    x = torch.randint(0, 50, (2, 20))
    torch.testing.assert_close(copy(x), model(x), rtol=0, atol=0)


def test_torch_trainer_fits_and_evaluates_with_ignored_targets():
    g = np.random.default_rng(0)
    x = g.integers(0, 81, (12, 80)).astype(np.int64)
    y = np.roll(x, -1, axis=1)
    y_test = np.full_like(y[8:], -1)
    y_test[:, -1] = y[8:, -1]  # LEAF's test windows: only the last position counts
    y = np.concatenate([y[:8], y_test])
    fed = FederatedDataset("seq", x, y, x[8:], y_test, [np.arange(8)], [np.arange(8, 12)], 81)
    trainer = TorchTrainer(build_model("char_lstm", (80,), 81), jit_eval=True)
    params = trainer.get_params()
    result = trainer.fit(params, fed.client(0), FitConfig(epochs=1, batch_size=4, lr=0.5))
    assert np.isfinite(result.update).all() and np.abs(result.update).max() > 0
    ev = trainer.evaluate(params + result.update, fed.x_test, fed.y_test)
    assert ev.examples == 4 and 0 <= ev.accuracy <= 1
