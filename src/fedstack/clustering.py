"""Scoring a clustering of clients against the truth, for clustered federated learning.

Where the groups are planted (``data.partition = "clusters"``), the clusters an algorithm assigns
(IFCA, CFL) are judged by the adjusted Rand index: 1 when they are the planted groups up to renaming,
about 0 for a random assignment, whatever the number and sizes of the clusters.
"""

from __future__ import annotations

import numpy as np


def _codes(labels) -> np.ndarray:
    """Labels of any kind as int64 codes 0..m-1."""
    return np.unique(np.asarray(labels), return_inverse=True)[1].reshape(-1).astype(np.int64)


def adjusted_rand_index(labels_true, labels_pred) -> float:
    """The adjusted Rand index of two labelings of the same items (Hubert & Arabie 1985).

    Hubert & Arabie 1985, "Comparing Partitions", Journal of Classification 2: the Rand index (the
    fraction of pairs of items the two labelings treat alike: together in both, or apart in both)
    corrected for chance under the permutation model, (RI − E[RI]) / (max RI − E[RI]). 1.0 for
    labelings equal up to renaming, about 0 for independent ones, negative below chance. Computed
    from the pair counts in exact integers, as scikit-learn's ``adjusted_rand_score`` does, so the
    degenerate cases agree with it: no pair split by either labeling (both one cluster, or both all
    singletons, or fewer than two items) gives 1.0. Labels may be of any kind NumPy can sort.
    """
    true, pred = _codes(labels_true), _codes(labels_pred)
    if len(true) != len(pred):
        raise ValueError(f"labelings differ in length: {len(true)} and {len(pred)}")
    n = len(true)
    if n == 0:
        return 1.0
    width = int(pred.max()) + 1
    cells = np.unique(true * width + pred, return_counts=True)[1]  # the contingency table's non-zero cells
    rows, cols = np.bincount(true), np.bincount(pred)
    # Ordered pairs of distinct items: together in both (both), in the truth only, in the prediction only.
    both = int((cells * cells).sum()) - n
    true_only = int((rows * rows).sum()) - n - both
    pred_only = int((cols * cols).sum()) - n - both
    neither = n * n - n - both - true_only - pred_only
    if true_only == 0 and pred_only == 0:
        return 1.0
    return 2.0 * (both * neither - true_only * pred_only) / (
        (both + true_only) * (true_only + neither) + (both + pred_only) * (pred_only + neither))
