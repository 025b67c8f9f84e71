import numpy as np

from fedstack.evaluation import distribution


def test_distribution_by_hand():
    d = distribution([0.2, 0.4, 0.6, 0.8, 1.0])
    assert d == {"mean": 0.6, "p10": 0.28, "p50": 0.6, "p90": 0.92, "clients": 5} or \
        np.allclose([d["mean"], d["p10"], d["p50"], d["p90"]], [0.6, 0.28, 0.6, 0.92])
    assert distribution([]) is None
