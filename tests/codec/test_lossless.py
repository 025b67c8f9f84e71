import struct

import numpy as np
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from fedstack.codec import CodecContext, Pipeline
from fedstack.codec.lossless import Zstd
from fedstack.codec.quantize import QSGD
from fedstack.codec.sparsify import RandK
from fedstack.errors import ConfigError

CTX = CodecContext(round=1, client_id=0, seed=0)
HEADER_BYTES, HEADER_F32 = bytes([7, 1, 0]), bytes([7, 1, 1])


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=3000))
def test_bytes_round_trip(data):
    payload = Zstd().encode(data, CTX)
    assert payload[:3] == HEADER_BYTES
    assert zstandard.ZstdDecompressor().decompress(payload[3:]) == data  # a plain zstd frame
    out = Zstd().decode(payload, CTX)
    assert isinstance(out, bytes) and out == data


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(width=32, allow_nan=False), max_size=500))
def test_vector_round_trip_keeps_the_kind(xs):
    v = np.array(xs, np.float32)
    payload = Zstd().encode(v, CTX)
    assert payload[:3] == HEADER_F32
    out = Zstd().decode(payload, CTX)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == v.shape
    assert out.tobytes() == v.tobytes() and out.flags.writeable


def test_compresses_redundant_data_and_levels():
    data = bytes(100_000)
    assert len(Zstd().encode(data, CTX)) < 100
    assert Zstd(level=19).decode(Zstd(level=19).encode(data, CTX), CTX) == data


def test_after_a_quantizer_in_a_pipeline():
    v = np.random.default_rng(0).normal(size=20_000).astype(np.float32)
    plain, packed = Pipeline([QSGD(bits=8)]), Pipeline([QSGD(bits=8), Zstd()])
    assert len(packed.encode(v, CTX)) < 0.8 * len(plain.encode(v, CTX))  # 8-bit QSGD levels cluster near 0
    np.testing.assert_array_equal(packed.decode(packed.encode(v, CTX), CTX), plain.decode(plain.encode(v, CTX), CTX))
    alone = Pipeline([Zstd()])
    np.testing.assert_array_equal(alone.decode(alone.encode(v, CTX), CTX), v)
    randk = Pipeline([RandK(fraction=0.1), Zstd()])
    assert randk.decode(randk.encode(v, CTX), CTX).shape == v.shape


def _valid():
    return Zstd().encode(b"federated " * 50, CTX)


def test_every_single_byte_corruption_is_caught_or_harmless():
    payload = _valid()
    for pos in range(len(payload)):
        for flip in (0x01, 0x10, 0xFF):
            bad = bytearray(payload)
            bad[pos] ^= flip
            try:
                out = Zstd().decode(bytes(bad), CTX)
            except ValueError:
                continue
            # e.g. a window-size bit that does not matter, or the kind byte (bytes read as a float32 vector)
            assert (out.tobytes() if isinstance(out, np.ndarray) else out) == b"federated " * 50


def test_truncated_padded_and_foreign_payloads():
    payload = _valid()
    for cut in range(len(payload)):
        with pytest.raises(ValueError):
            Zstd().decode(payload[:cut], CTX)
    with pytest.raises(ValueError, match="corrupt"):
        Zstd().decode(payload + b"\x00", CTX)
    with pytest.raises(ValueError, match="codec id"):
        Zstd().decode(QSGD().encode(np.ones(3, np.float32), CTX), CTX)
    with pytest.raises(ValueError, match="version"):
        Zstd().decode(bytes([7, 2, 0]) + payload[3:], CTX)
    with pytest.raises(ValueError, match="kind"):
        Zstd().decode(bytes([7, 1, 9]) + payload[3:], CTX)
    with pytest.raises(ValueError, match="expected bytes"):
        Zstd().decode(np.zeros(4, np.float32), CTX)


def test_frames_must_declare_size_and_checksum():
    no_size = zstandard.ZstdCompressor(write_content_size=False, write_checksum=True).compress(b"abc" * 10)
    with pytest.raises(ValueError, match="content size"):
        Zstd().decode(HEADER_BYTES + no_size, CTX)
    no_check = zstandard.ZstdCompressor(write_checksum=False).compress(b"abc" * 10)
    with pytest.raises(ValueError, match="checksum"):
        Zstd().decode(HEADER_BYTES + no_check, CTX)


def test_declared_size_is_bounded_before_inflating():
    bomb = zstandard.ZstdCompressor(write_checksum=True).compress(bytes(10_000_000))
    assert len(bomb) < 1000
    with pytest.raises(ValueError, match="exceeds"):
        Zstd(max_bytes=1_000_000).decode(HEADER_BYTES + bomb, CTX)


def test_float_payload_must_be_whole_values():
    frame = zstandard.ZstdCompressor(write_checksum=True).compress(b"\x00" * 6)
    with pytest.raises(ValueError, match="float32"):
        Zstd().decode(HEADER_F32 + frame, CTX)


@pytest.mark.parametrize("level", [0, 23, True, 3.0])
def test_level_is_validated(level):
    with pytest.raises(ConfigError, match="codec.zstd_level"):
        Zstd(level=level)


def test_flags():
    z = Zstd()
    assert (z.name, z.linear, z.unbiased, z.takes_bytes, z.emits_bytes, z.stateful) == (
        "zstd", False, True, True, True, False,
    )
    assert struct.unpack("<BBB", z.encode(b"", CTX)[:3]) == (7, 1, 0)


def test_codecs_pickle_for_worker_processes():
    import pickle

    from fedstack.codec.quantize import BF16, FP16
    from fedstack.codec.sparsify import Sign, TopK

    v = np.random.default_rng(1).normal(size=100).astype(np.float32)
    for codec in (FP16(), BF16(), QSGD(bits=4), RandK(fraction=0.2), Zstd(level=5)):
        clone = pickle.loads(pickle.dumps(codec))
        assert clone.encode(v, CTX) == codec.encode(v, CTX)
    for codec in (TopK(fraction=0.2), Sign()):
        clone = pickle.loads(pickle.dumps(codec))
        assert clone.encode(v, CTX, None)[0] == codec.encode(v, CTX, None)[0]


def test_in_a_pipeline_zstd_takes_only_the_kind_it_is_given_and_the_models_size():
    after_vector, after_bytes = Pipeline([Zstd()]), Pipeline([QSGD(bits=8), Zstd()])
    assert (after_vector.stages[0].content, after_bytes.stages[1].content) == ("float32", "bytes")
    v = np.ones(100, np.float32)
    wrong_kind = Zstd().encode(v.tobytes(), CTX)  # bytes where the pipeline compresses a vector
    with pytest.raises(ValueError, match="content kind"):
        after_vector.decode(wrong_kind, CTX, size=100)
    bomb = Zstd().encode(np.zeros(10_000, np.float32), CTX)  # 40 KB of content for a 100-value model
    assert len(bomb) < after_vector.max_payload_bytes(100)
    with pytest.raises(ValueError, match="exceeds 400"):
        after_vector.decode(bomb, CTX, size=100)
    np.testing.assert_array_equal(after_vector.decode(after_vector.encode(v, CTX), CTX, size=100), v)


@pytest.mark.parametrize("codec", [RandK(fraction=0.01), QSGD(bits=8)])
def test_a_payload_claiming_another_length_than_the_model_is_refused_before_allocating(codec):
    small = codec.encode(np.ones(1000, np.float32), CTX)
    with pytest.raises(ValueError, match="the model has 10 values"):
        Pipeline([codec]).decode(small, CTX, size=10)


def test_a_pipeline_never_converts_bytes_to_a_vector():
    pipeline = Pipeline([Zstd()])
    pipeline.stages[0].content = None  # a stage that lets bytes through: the pipeline still type-checks
    with pytest.raises(ValueError, match="decoded to bytes, not a flat vector"):
        pipeline.decode(Zstd().encode(b"x" * 40, CTX), CTX)
