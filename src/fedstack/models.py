"""The models named in the config: logreg, mlp (McMahan's 2NN) and cnn (McMahan's CNN)."""

from __future__ import annotations

import math

MODELS = ("logreg", "mlp", "cnn")


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int):
    """A fresh torch module for inputs of `input_shape` (without the batch dimension).

    `cnn` and `mlp` follow McMahan et al. 2017, "Communication-Efficient Learning of Deep
    Networks from Decentralized Data": CNN = conv5x5x32 → pool2 → conv5x5x64 → pool2 →
    fc512 → fc; 2NN = two hidden layers of 200 units.
    """
    from torch import nn

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
    raise ValueError(f"unknown model {name!r} ({' | '.join(MODELS)})")
