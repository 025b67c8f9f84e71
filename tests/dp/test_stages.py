import numpy as np
import pytest
from hypothesis import given, strategies as st
from hypothesis.extra.numpy import arrays

from fedstack.codec import CodecContext, CodecOptions, build_pipeline
from fedstack.dp.stages import Clip, Gaussian


@given(arrays(np.float32, st.integers(1, 64), elements=st.floats(-1e4, 1e4, width=32)), st.floats(0.01, 100))
def test_clip_never_leaves_an_update_longer_than_the_clip_norm(update, clip_norm):
    out = Clip(clip_norm).encode(update, CodecContext(1, 0, 0))
    assert np.linalg.norm(out.astype(np.float64)) <= clip_norm * (1 + 1e-6)  # float32 rounding at most
    if np.linalg.norm(update.astype(np.float64)) <= clip_norm * 0.999:
        np.testing.assert_array_equal(out, update)  # inside the ball: untouched


def test_the_rounds_clip_norm_overrides_the_configured_one():
    update = np.array([3.0, 4.0], np.float32)
    np.testing.assert_allclose(Clip(1.0).encode(update, CodecContext(1, 0, 0, clip_norm=2.5)), [1.5, 2.0], rtol=1e-6)


def test_gaussian_noise_has_the_configured_std_and_is_reproducible():
    size = 200_000
    codec = Gaussian(noise_multiplier=2.0, clip_norm=0.5, mode="local")
    ctx = CodecContext(3, 7, seed=11)
    noise = codec.encode(np.zeros(size, np.float32), ctx).astype(np.float64)
    # std z·C = 1.0; the sample std of n normals is within ~5/√(2n) of it
    assert abs(noise.std() - 1.0) < 5 / np.sqrt(2 * size)
    assert abs(noise.mean()) < 5 / np.sqrt(size)
    np.testing.assert_array_equal(codec.encode(np.zeros(size, np.float32), ctx), noise.astype(np.float32))
    other = codec.encode(np.zeros(size, np.float32), CodecContext(3, 8, seed=11))
    assert not np.array_equal(other, noise.astype(np.float32))  # each client its own draw


def test_distributed_noise_splits_the_std_so_the_sum_carries_it():
    n, size = 16, 50_000
    codec = Gaussian(noise_multiplier=1.0, clip_norm=2.0, mode="distributed", clients=n)
    total = sum(codec.encode(np.zeros(size, np.float32), CodecContext(1, i, 0)).astype(np.float64) for i in range(n))
    assert codec.std(CodecContext(1, 0, 0)) == pytest.approx(2.0 / 4)
    assert abs(total.std() - 2.0) < 5 * 2.0 / np.sqrt(2 * size)


def test_a_deployed_client_draws_noise_the_server_cannot_recompute():
    codec = Gaussian(1.0, 1.0, "local", seeded=False)
    ctx = CodecContext(1, 0, 0)
    zeros = np.zeros(100, np.float32)
    assert not np.array_equal(codec.encode(zeros, ctx), codec.encode(zeros, ctx))


def test_clip_and_gaussian_decode_as_identity_so_they_may_precede_a_summing_stage():
    pipeline = build_pipeline(["clip", "gaussian"], CodecOptions(clip_norm=1.0, noise_multiplier=0.5))
    assert pipeline.linear
    payload = pipeline.encode(np.array([0.3, 0.4], np.float32), CodecContext(1, 0, 0))
    assert pipeline.decode(payload, CodecContext(1, 0, 0)).shape == (2,)
    with pytest.raises(ValueError, match="local or distributed"):
        Gaussian(1.0, 1.0, "central")
