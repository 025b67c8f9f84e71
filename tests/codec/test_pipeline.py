import numpy as np
import pytest

from fedstack.codec import CodecContext, Pipeline, build_pipeline
from fedstack.errors import ConfigError

CTX = CodecContext(round=1, client_id=0, seed=0)


def test_identity_round_trip_counts_real_bytes():
    v = np.random.default_rng(0).normal(size=1000).astype(np.float32)
    for pipeline in (Pipeline(), build_pipeline(["identity"])):
        payload = pipeline.encode(v, CTX)
        assert isinstance(payload, bytes) and len(payload) == 4000
        np.testing.assert_array_equal(pipeline.decode(payload, CTX), v)


def test_stages_run_in_order_and_reverse_on_decode():
    calls = []

    class Tag:
        linear, unbiased = True, True

        def __init__(self, name, factor):
            self.name, self.factor = name, factor

        def encode(self, value, ctx):
            calls.append(("enc", self.name))
            return value * self.factor

        def decode(self, value, ctx):
            calls.append(("dec", self.name))
            return value / self.factor

    p = Pipeline([Tag("a", 2.0), Tag("b", 4.0)])
    out = p.decode(p.encode(np.ones(3, np.float32), CTX), CTX)
    np.testing.assert_array_equal(out, np.ones(3))
    assert calls == [("enc", "a"), ("enc", "b"), ("dec", "b"), ("dec", "a")]


def test_unknown_codec_names_the_key():
    with pytest.raises(ConfigError, match="codec.pipeline"):
        build_pipeline(["nope"])
