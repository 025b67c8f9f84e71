"""A user's own parts, written as a user would and imported by no fedstack code: shared by the tests of
issue 20 that run them on every engine."""

# A user's regression task: its network, its loader, its metrics, and how its metrics aggregate. No fedstack.
REGRESSION = """
import numpy as np
import torch

def make_model():
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(),
                               torch.nn.Linear(16, 1))

def load():
    rng = np.random.default_rng(0)
    w = rng.normal(size=8)
    x = rng.normal(size=(1200, 8)).astype(np.float32)
    y = (x @ w + 0.1 * rng.normal(size=1200)).astype(np.float32)
    return x[:1000], y[:1000], x[1000:], y[1000:]

def metrics(predictions, targets):  # sums over the batch: they add up across shards and clients
    error = (predictions[:, 0] - targets).abs()
    return {"abs_error": error.sum(), "within_half": (error < 0.5).sum()}

def aggregate(sums, examples):  # Flower's evaluate_metrics_aggregation_fn
    return {"mae": sums["abs_error"] / examples, "share_within_half": sums["within_half"] / examples}
"""
