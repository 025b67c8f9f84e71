import os
import time

import numpy as np
import pytest

from fedstack.secagg.crypto import agree, decrypt, encrypt, generate_keypair, prg_mask, public_key


def test_key_agreement_is_symmetric_and_label_separated():
    (a_sk, a_pk), (b_sk, b_pk) = generate_keypair(), generate_keypair()
    assert public_key(a_sk) == a_pk and len(a_sk) == len(a_pk) == 32
    k = agree(a_sk, b_pk, b"mask")
    assert k == agree(b_sk, a_pk, b"mask") and len(k) == 32
    assert k != agree(a_sk, b_pk, b"channel")
    assert k != agree(a_sk, generate_keypair()[1], b"mask")
    with pytest.raises(ValueError):
        agree(a_sk, bytes(32), b"mask")  # a low-order point: the exchange would be all zero
    with pytest.raises(ValueError):
        agree(a_sk, b_pk[:31], b"mask")


def test_aead_round_trip_and_tampering():
    key = os.urandom(32)
    ct = encrypt(key, b"shares", b"ad")
    assert decrypt(key, ct, b"ad") == b"shares"
    assert encrypt(key, b"shares", b"ad") != ct  # fresh nonce
    for i in range(len(ct)):
        bad = bytearray(ct)
        bad[i] ^= 1
        with pytest.raises(ValueError):
            decrypt(key, bytes(bad), b"ad")
    for bad_args in ((os.urandom(32), ct, b"ad"), (key, ct, b"other ad"), (key, ct[:-1], b"ad"), (key, ct[:10], b"ad")):
        with pytest.raises(ValueError):
            decrypt(*bad_args)


@pytest.mark.parametrize("bits", [16, 20, 32, 33, 48, 62])
def test_prg_is_deterministic_and_in_range(bits):
    seed = os.urandom(32)
    m = prg_mask(seed, 10_000, bits)
    assert m.dtype == (np.uint32 if bits <= 32 else np.uint64) and m.shape == (10_000,)
    np.testing.assert_array_equal(m, prg_mask(seed, 10_000, bits))
    np.testing.assert_array_equal(m[:100], prg_mask(seed, 100, bits))  # a prefix of the same stream
    assert int(m.max()) < 2**bits and int(m.max()) > 2 ** (bits - 1)  # uses the whole range
    assert not np.array_equal(m, prg_mask(os.urandom(32), 10_000, bits))
    m += 1  # writable
    assert prg_mask(seed, 0, bits).size == 0


def test_prg_known_answer():
    # AES-256-CTR of zeros under the all-zero key and counter block (the first block is AES_0(0)).
    assert prg_mask(bytes(32), 4, 32).astype("<u4").tobytes().hex() == "dc95c078a2408989ad48a21492842087"


def test_prg_rejects_bad_arguments():
    with pytest.raises(ValueError, match="32 bytes"):
        prg_mask(bytes(16), 10, 32)
    with pytest.raises(ValueError, match="bits"):
        prg_mask(bytes(32), 10, 65)
    with pytest.raises(ValueError, match="length"):
        prg_mask(bytes(32), -1, 32)


def test_prg_is_fast():
    seed = os.urandom(32)
    best = min(_timed(prg_mask, seed, 1_700_000, 32) for _ in range(3))
    print(f"prg_mask of 1.7 M uint32: {best * 1e3:.1f} ms")
    assert best < 0.1


def _timed(fn, *args):
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start
