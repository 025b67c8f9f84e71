import numpy as np
import pytest

from fedstack.codec import Codec, CodecContext, Pipeline, build_pipeline
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

    class Tag(Codec):
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


def test_every_named_codec_builds_with_its_parameters_and_round_trips():
    from fedstack.codec import CODECS, CodecOptions

    v = np.random.default_rng(1).normal(size=5000).astype(np.float32)
    options = CodecOptions(bits=4, qsgd_bucket=64, topk_fraction=0.1, zstd_level=5)
    for name in CODECS:
        pipeline = build_pipeline([name], options)
        if pipeline.summing:  # secagg, ckks: protocols the round loop runs, not transforms (tests/secagg, test_he)
            continue
        payload, state = pipeline.encode_with_state(v, CTX, None)
        decoded = pipeline.decode(payload, CTX)
        assert decoded.shape == v.shape and decoded.dtype == np.float32, name
        assert set(state) == ({f"codec0.{name}"} if pipeline.stateful else set()), name
    assert build_pipeline(["qsgd"], options).stages[0].bits == 4


@pytest.mark.parametrize("names, options, key", [
    (["qsgd"], {"bits": 3}, "codec.bits"),
    (["topk"], {"topk_fraction": 0.0}, "codec.topk_fraction"),
    (["randk"], {"topk_fraction": 1.5}, "codec.topk_fraction"),
    (["topk", "qsgd"], {}, "codec.pipeline"),  # qsgd needs a vector; topk already made bytes
])
def test_bad_codec_settings_name_their_key(names, options, key):
    from fedstack.codec import CodecOptions

    with pytest.raises(ConfigError, match=key):
        build_pipeline(names, CodecOptions(**options))


def test_a_stateful_pipeline_needs_its_state():
    pipeline = build_pipeline(["topk", "zstd"])
    v = np.arange(1000, dtype=np.float32)
    with pytest.raises(ValueError, match="encode_with_state"):
        pipeline.encode(v, CTX)
    _, state = pipeline.encode_with_state(v, CTX, None)
    residual = state["codec0.topk"]
    # the residual is exactly what was not sent: decoded + residual == update
    np.testing.assert_array_equal(pipeline.decode(pipeline.encode_with_state(v, CTX, None)[0], CTX) + residual, v)


def test_a_raw_payload_of_a_partial_value_is_refused():
    with pytest.raises(ValueError, match="whole number"):
        Pipeline().decode(b"\x00" * 7, CTX)


def test_a_summing_stage_refuses_nonlinear_stages_before_it():
    from fedstack.codec.sparsify import TopK

    class MaskedSum(Codec):  # stands in for secure aggregation: the server only ever sees a sum
        name, linear, unbiased, needs_linear_input, takes_bytes = "masked_sum", True, True, True, True

        def encode(self, value, ctx):
            return value

        def decode(self, value, ctx):
            return value

    Pipeline([build_pipeline(["identity"]).stages[0], MaskedSum()])
    with pytest.raises(ConfigError, match="'topk' is not"):
        Pipeline([TopK(), MaskedSum()])
