"""Synthetic(α, β) of Li et al. 2020: devices whose models (α) and inputs (β) differ."""

from __future__ import annotations

import numpy as np

DIMENSION, CLASSES = 60, 10


def synthetic(alpha: float, beta: float, num_devices: int, rng: np.random.Generator, iid: bool = False,
              test_fraction: float = 0.1):
    """Devices' data as in Li et al. 2020, "Federated Optimization in Heterogeneous Networks" (FedProx).

    Device k draws u_k ~ N(0, α), W_k ~ N(u_k, 1), b_k ~ N(u_k, 1), B_k ~ N(0, β),
    v_k ~ N(B_k, 1) per feature, x ~ N(v_k, Σ) with Σ_jj = j^-1.2, and labels
    y = argmax(W_k x + b_k); sample counts follow lognormal(4, 2) + 50. The IID variant
    shares one W, b ~ N(0, 1) and draws every x ~ N(0, Σ). Each device keeps `test_fraction`
    of its samples for the test set.

    Returns (x, y, x_test, y_test, parts): float32 features, int64 labels, and per device the
    indices of its training samples in x.
    """
    counts = rng.lognormal(4, 2, num_devices).astype(np.int64) + 50
    mean_w = rng.normal(0, alpha, num_devices)
    b_shift = rng.normal(0, beta, num_devices)
    scale = np.sqrt(np.arange(1, DIMENSION + 1, dtype=np.float64) ** -1.2)  # √Σ_jj
    shared_w, shared_b = rng.normal(0, 1, (DIMENSION, CLASSES)), rng.normal(0, 1, CLASSES)
    train, test, parts, start = [], [], [], 0
    for k in range(num_devices):
        if iid:
            w, b, mean_x = shared_w, shared_b, np.zeros(DIMENSION)
        else:
            w = rng.normal(mean_w[k], 1, (DIMENSION, CLASSES))
            b = rng.normal(mean_w[k], 1, CLASSES)
            mean_x = rng.normal(b_shift[k], 1, DIMENSION)
        x = mean_x + rng.normal(size=(counts[k], DIMENSION)) * scale
        y = np.argmax(x @ w + b, axis=1)  # argmax of the softmax is the argmax of the logits
        n_test = max(1, int(test_fraction * counts[k]))
        train.append((x[n_test:], y[n_test:]))
        test.append((x[:n_test], y[:n_test]))
        parts.append(np.arange(start, start + counts[k] - n_test, dtype=np.int64))
        start += counts[k] - n_test

    def stack(pairs):
        return (np.concatenate([p[0] for p in pairs]).astype(np.float32),
                np.concatenate([p[1] for p in pairs]).astype(np.int64))

    return (*stack(train), *stack(test), parts)
