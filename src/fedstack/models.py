"""The models named in the config: logreg, mlp (McMahan's 2NN), cnn (McMahan's CNN), char_lstm, word_lstm."""

from __future__ import annotations

import math
import sys

MODELS = ("logreg", "mlp", "cnn", "char_lstm", "word_lstm")
# (embedding size, LSTM units, LSTM layers) of the sequence models
SEQUENCE_MODELS = {"char_lstm": (8, 256, 2), "word_lstm": (64, 128, 1)}


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int):
    """A fresh torch module for inputs of `input_shape` (without the batch dimension).

    `cnn` and `mlp` follow McMahan et al. 2017, "Communication-Efficient Learning of Deep
    Networks from Decentralized Data": CNN = conv5x5x32 → pool2 → conv5x5x64 → pool2 →
    fc512 → fc; 2NN = two hidden layers of 200 units.

    The sequence models take token ids [batch, time] (int64; input_shape = (time,)) and return
    logits [batch, time, num_classes], a prediction of the next token at every position:

    * `char_lstm`: the Shakespeare next-character LSTM of McMahan et al. 2017 (characters embedded
      in a learned 8-dimensional space, two LSTM layers of 256 units, a softmax over the
      characters) and of LEAF (Caldas et al. 2018, models/shakespeare/stacked_lstm.py, which reads
      only the last position's output): Embedding(C, 8) → LSTM(8, 256, 2 layers) → Linear(256, C).
      torch's LSTM has two bias vectors per layer where TensorFlow's BasicLSTMCell has one.
    * `word_lstm`: a small next-word model, Embedding(C, 64) → LSTM(64, 128) → Linear(128, C):
      the shape of the Stack Overflow next-word LSTM of Reddi et al. 2021 ("Adaptive Federated
      Optimization": embedding 96, 670 units, 10k words + OOV, 20-word sequences) and of the
      keyboard LSTM of Hard et al. 2018, made smaller for CPU simulation.
    """
    from .extras import require

    nn = require("torch.nn", "torch", f"model {name!r}")

    features = math.prod(input_shape)
    if name == "logreg":
        return nn.Sequential(nn.Flatten(), nn.Linear(features, num_classes))
    if name == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(features, 200), nn.ReLU(),
                             nn.Linear(200, 200), nn.ReLU(), nn.Linear(200, num_classes))
    if name == "cnn":
        channels, height, width = input_shape
        return nn.Sequential(
            nn.Conv2d(channels, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(64 * (height // 4) * (width // 4), 512), nn.ReLU(), nn.Linear(512, num_classes))
    if name in SEQUENCE_MODELS:
        embed, hidden, layers = SEQUENCE_MODELS[name]
        return sys.modules[__name__].SequenceLSTM(num_classes, embed, hidden, layers)
    raise ValueError(f"unknown model {name!r} ({' | '.join(MODELS)})")


def _define_sequence_lstm():
    from .extras import require

    nn = require("torch.nn", "torch", "SequenceLSTM")

    class SequenceLSTM(nn.Module):
        """Embedding → LSTM (batch first) → Linear: logits [batch, time, classes] from ids [batch, time]."""

        def __init__(self, num_classes: int, embed: int, hidden: int, layers: int):
            super().__init__()
            self.embedding = nn.Embedding(num_classes, embed)
            self.lstm = nn.LSTM(embed, hidden, num_layers=layers, batch_first=True)
            self.head = nn.Linear(hidden, num_classes)

        def forward(self, x):
            out, _ = self.lstm(self.embedding(x))
            return self.head(out)

    SequenceLSTM.__module__, SequenceLSTM.__qualname__ = __name__, "SequenceLSTM"
    return SequenceLSTM


def __getattr__(name: str):
    # torch is imported on first use (importing this module stays cheap); the class is defined
    # once and kept here, so pickle finds it as fedstack.models.SequenceLSTM.
    if name == "SequenceLSTM":
        cls = globals()[name] = _define_sequence_lstm()
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
