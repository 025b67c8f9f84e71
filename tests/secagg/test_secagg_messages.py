import os
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedstack.secagg.messages import (
    AdvertiseKeys,
    MaskedInput,
    MaskedInputRequest,
    ShareKeys,
    ShareKeysRequest,
    Unmask,
    UnmaskRequest,
    decode,
    pack_share_plaintext,
    unpack_share_plaintext,
)
from fedstack.secagg.shamir import P

KEY = os.urandom(32)
SAMPLES = [
    AdvertiseKeys(7, os.urandom(32), os.urandom(32)),
    ShareKeysRequest(7, ((1, KEY, os.urandom(32)), (2**32 - 1, os.urandom(32), KEY))),
    ShareKeysRequest(0, ()),
    ShareKeys(3, KEY, ((1, b"ciphertext"), (4, b""), (9, os.urandom(200)))),
    MaskedInputRequest(3, ((1, os.urandom(172)), (2, b"x"))),
    MaskedInput(5, 32, np.array([0, 1, 2**32 - 1], dtype=np.uint32)),
    MaskedInput(5, 20, np.arange(10, dtype=np.uint32)),
    MaskedInput(5, 62, np.array([2**62 - 1, 0], dtype=np.uint64)),
    MaskedInput(5, 32, np.zeros(0, dtype=np.uint32)),
    UnmaskRequest(1, (1, 2, 5)),
    Unmask(1, ((1, P - 1), (2, 0)), ((5, 12345),), ((6, "aead"), (8, "malformed"))),
    Unmask(1, (), (), ()),
]


def same(a, b):
    if isinstance(a, MaskedInput):
        return (type(a), a.client_id, a.bits, a.y.dtype, a.y.tolist()) == (type(b), b.client_id, b.bits,
                                                                           b.y.dtype, b.y.tolist())
    return a == b


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip(msg):
    data = msg.to_bytes()
    assert isinstance(data, bytes)
    assert same(type(msg).from_bytes(data), msg)
    assert same(decode(data), msg)
    assert same(decode(bytearray(data)), msg)


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_truncated_extended_or_retyped_bytes_raise_value_error(msg):
    data = msg.to_bytes()
    for cut in range(len(data)):
        with pytest.raises(ValueError):
            type(msg).from_bytes(data[:cut])
    with pytest.raises(ValueError, match="trailing"):
        type(msg).from_bytes(data + b"\0")
    with pytest.raises(ValueError, match="version"):
        type(msg).from_bytes(data[:1] + b"\x02" + data[2:])
    other = AdvertiseKeys if not isinstance(msg, AdvertiseKeys) else Unmask
    with pytest.raises(ValueError, match="message type"):
        other.from_bytes(data)


def test_specific_malformations():
    header = struct.pack(">BBI", 7, 1, 1)
    share = lambda u, x: struct.pack(">I", u) + x.to_bytes(66, "big")  # noqa: E731
    with pytest.raises(ValueError, match="field element"):
        Unmask.from_bytes(header + struct.pack(">I", 1) + share(1, P) + bytes(8))
    with pytest.raises(ValueError, match="twice"):  # never both shares of one peer
        Unmask.from_bytes(header + struct.pack(">I", 1) + share(1, 5) + struct.pack(">I", 1) + share(1, 6) + bytes(4))
    with pytest.raises(ValueError, match="reason"):
        Unmask.from_bytes(header + bytes(8) + struct.pack(">IIB", 1, 4, 9))
    with pytest.raises(ValueError, match="cannot fit"):
        Unmask.from_bytes(header + struct.pack(">I", 2**32 - 1))
    with pytest.raises(ValueError, match="twice"):
        UnmaskRequest.from_bytes(struct.pack(">BBIIII", 6, 1, 1, 2, 4, 4))
    masked = struct.pack(">BBI", 5, 1, 1)
    with pytest.raises(ValueError, match="2\\*\\*20"):
        MaskedInput.from_bytes(masked + struct.pack(">BI", 20, 1) + struct.pack("<I", 2**20))
    with pytest.raises(ValueError, match="bits"):
        MaskedInput.from_bytes(masked + struct.pack(">BI", 65, 0))
    with pytest.raises(ValueError, match="maximum"):
        MaskedInput.from_bytes(masked + struct.pack(">BI", 32, 2**29))
    with pytest.raises(ValueError, match="unknown message type"):
        decode(b"\x63" + bytes(10))
    with pytest.raises(ValueError):
        decode(b"")
    with pytest.raises(ValueError, match="32 bytes"):
        AdvertiseKeys(1, b"short", KEY).to_bytes()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_junk_raises_value_error_or_parses(data):
    try:
        msg = decode(data)
    except ValueError:
        return
    assert msg.to_bytes() == data  # anything accepted is exactly what its own encoding would be


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(SAMPLES), st.data())
def test_corrupted_messages_raise_value_error_or_parse(msg, data):
    raw = bytearray(msg.to_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    try:
        decode(bytes(raw))
    except ValueError:
        pass


def test_share_plaintext():
    data = pack_share_plaintext(3, 9, P - 1, 17)
    assert len(data) == 140 and unpack_share_plaintext(data) == (3, 9, P - 1, 17)
    with pytest.raises(ValueError):
        unpack_share_plaintext(data[:-1])
    with pytest.raises(ValueError, match="field element"):
        unpack_share_plaintext(data[:8] + P.to_bytes(66, "big") + data[74:])
