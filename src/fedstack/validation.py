"""Checks on one client's update before it may touch an aggregate: pure functions, shared by the round
loop, the gossip loop and the gRPC transport (which refuses a bad update before the round sees it)."""

from __future__ import annotations

import math

import numpy as np

from .strategy.base import ClientUpdate
from .strategy.robust import sq_norm


def dp_release(metrics: dict) -> tuple[int, float] | None:
    """(DP-SGD steps, sample rate) a client reports for its privacy ledger, or None if they are not a whole
    number of steps (at most 10⁹) and a rate in [0, 1]."""
    steps, rate = metrics.get("dp_steps"), metrics.get("dp_sample_rate")
    if steps is None or rate is None or not (math.isfinite(steps) and math.isfinite(rate)):
        return None
    if steps != int(steps) or not 0 <= steps <= 1e9 or not 0 <= rate <= 1:
        return None
    return int(steps), float(rate)


def influence(updates: list[ClientUpdate]) -> np.ndarray:
    """Each update's pull on a weighted mean: ‖Δ‖ scaled by its weight over the median weight. The norm
    screen judges this, so a modest update claiming a huge example count is as suspect as a huge one."""
    norms = np.sqrt([sq_norm(u.update) for u in updates])
    weights = np.array([max(u.num_examples, 0) for u in updates], dtype=np.float64)
    typical = float(np.median(weights))
    return norms * (weights / typical) if typical > 0 else norms


def update_problem(update: np.ndarray, size: int, num_examples: int) -> tuple[str, str] | None:
    """(reason, message) why a decoded update may not touch the aggregate — wrong length ("shape"), not
    float32 ("dtype"), NaN/inf ("non_finite"), negative weight ("weight") —, or None."""
    if not isinstance(update, np.ndarray) or update.shape != (size,):
        got = update.shape if isinstance(update, np.ndarray) else type(update).__name__
        return "shape", f"expected {size} values, got {got}"
    if update.dtype != np.float32:
        return "dtype", f"expected float32 values, got {update.dtype}"
    if not np.isfinite(update).all():
        return "non_finite", "non-finite values"
    if num_examples < 0:
        return "weight", f"negative num_examples {num_examples}"
    return None


def check_update(update: np.ndarray, size: int, num_examples: int) -> str | None:
    """Why a decoded update may not touch the aggregate (`update_problem`'s message), or None."""
    problem = update_problem(update, size, num_examples)
    return problem[1] if problem else None
