import numpy as np

from fedstack.evaluation import distribution


def test_distribution_by_hand():
    d = distribution([0.2, 0.4, 0.6, 0.8, 1.0])  # numpy's linear percentiles: p10 = 0.2 + 0.4·0.2
    assert d["clients"] == 5
    np.testing.assert_allclose([d["mean"], d["p10"], d["p50"], d["p90"]], [0.6, 0.28, 0.6, 0.92])
    assert distribution([]) is None
