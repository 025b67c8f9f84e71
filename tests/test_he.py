"""CKKS homomorphic aggregation (fedstack.he): round trips, sums, chunking, malformed payloads, keys."""

import os
import struct

import numpy as np
import pytest

tenseal = pytest.importorskip("tenseal")

from fedstack import he  # noqa: E402

SLOTS = 4096  # N/2 for the default N = 8192
PRECISION = 2e-8  # per encrypted vector, absolute; he.CKKSParams measures 1.2e-8


@pytest.fixture(scope="module")
def holder():
    return he.KeyHolder()


@pytest.fixture(scope="module")
def public(holder):
    return holder.public_context()


def header(payload):
    return struct.unpack_from("<4sBII8s", payload)


def test_params_defaults_and_validation():
    p = he.CKKSParams()
    assert (p.poly_modulus_degree, p.coeff_mod_bit_sizes, p.scale_bits, p.slots) == (8192, (60, 40, 40, 60), 40, SLOTS)
    with pytest.raises(ValueError, match="128-bit"):
        he.CKKSParams(poly_modulus_degree=4096, coeff_mod_bit_sizes=(60, 40, 40, 60))
    with pytest.raises(ValueError, match="scale_bits"):
        he.CKKSParams(scale_bits=60)
    with pytest.raises(ValueError, match="poly_modulus_degree"):
        he.CKKSParams(poly_modulus_degree=8000)
    with pytest.raises(ValueError, match="two primes"):
        he.CKKSParams(coeff_mod_bit_sizes=(60,))


def test_round_trip_one_vector(holder, public):
    x = np.random.default_rng(0).uniform(-1, 1, 100).astype(np.float32)
    got = holder.decrypt(he.encrypt(public, x))
    assert got.dtype == np.float32 and got.shape == x.shape
    np.testing.assert_allclose(got, x, rtol=0, atol=PRECISION + 1e-7)  # + float32 rounding of the result
    np.testing.assert_allclose(holder.decrypt(he.encrypt(public, x), dtype=np.float64), x, rtol=0, atol=PRECISION)


def test_sum_of_several_vectors(holder, public):
    n = 7
    xs = np.random.default_rng(1).uniform(-1, 1, (n, 300))
    total = he.add(public, [he.encrypt(public, x) for x in xs])
    np.testing.assert_allclose(holder.decrypt(total, dtype=np.float64), xs.sum(0), rtol=0, atol=n * PRECISION)
    # Adding sums again is still a sum: the server may aggregate in a tree.
    again = he.add(public, [total, he.encrypt(public, xs[0])])
    np.testing.assert_allclose(holder.decrypt(again, dtype=np.float64), xs.sum(0) + xs[0], rtol=0,
                               atol=(n + 1) * PRECISION)


@pytest.mark.parametrize("length", [1, SLOTS - 1, SLOTS, SLOTS + 1, 3 * SLOTS + 5])
def test_lengths_and_chunks(holder, public, length):
    x = np.random.default_rng(length).uniform(-1, 1, length)
    payload = he.encrypt(public, x)
    assert header(payload)[2:4] == (length, -(-length // SLOTS))
    two = he.add(public, [payload, payload])
    np.testing.assert_allclose(holder.decrypt(two, dtype=np.float64), 2 * x, rtol=0, atol=2 * PRECISION)


def test_encrypt_refuses_bad_vectors(public):
    for bad, match in [(np.zeros((2, 3)), "flat"), (np.zeros(0), "length"), (np.array([1.0, np.nan]), "non-finite")]:
        with pytest.raises(ValueError, match=match):
            he.encrypt(public, bad)


@pytest.fixture(scope="module")
def payload(public):
    return he.encrypt(public, np.linspace(-1, 1, SLOTS + 10))  # two chunks


def _corruptions(payload):
    magic, version, n, count, key_id = header(payload)
    body = payload[he._HEADER.size:]
    first_len = struct.unpack_from("<I", body)[0]
    garbage_chunk = struct.pack("<I", first_len) + bytes(range(256)) * (first_len // 256) + bytes(first_len % 256)
    return {
        "truncated header": (payload[:10], "truncated header"),
        "bad magic": (b"NOPE" + payload[4:], "bad magic"),
        "bad version": (payload[:4] + bytes([9]) + payload[5:], "version 9"),
        "wrong chunk count": (struct.pack("<4sBII8s", magic, version, n, count + 1, key_id) + body, "chunks"),
        "empty vector": (struct.pack("<4sBII8s", magic, version, 0, 0, key_id), "empty"),
        "truncated chunk": (payload[:-100], "truncated in chunk 1"),
        "missing chunk": (payload[:he._HEADER.size + 4 + first_len], "truncated at chunk 1"),
        "trailing bytes": (payload + b"xx", "after the last chunk"),
        "garbage ciphertext": (payload[:he._HEADER.size] + garbage_chunk + body[4 + first_len:],
                               "not a CKKS ciphertext"),
        "not bytes": ("a string", "expected bytes"),
    }


@pytest.mark.parametrize("case", list(_corruptions(b"\0" * 64)))
def test_malformed_payloads_raise_value_error(holder, public, payload, case):
    bad, match = _corruptions(payload)[case]
    with pytest.raises(ValueError, match=match):
        holder.decrypt(bad)
    with pytest.raises(ValueError, match=match):
        he.add(public, [payload, bad])


def test_chunk_with_wrong_value_count_or_scale(holder, public, payload):
    ctx = tenseal.context_from(public)
    short = tenseal.ckks_vector(ctx, [0.5] * 3).serialize()  # 3 values where the chunk holds 10
    other_scale = tenseal.ckks_vector(ctx, [0.5] * 10, scale=2.0**30).serialize()
    first = payload[: len(payload) - 4 - len(_last_chunk(payload))]
    for chunk, match in [(short, "holds 3 values, expected 10"), (other_scale, "cannot be added")]:
        bad = first + struct.pack("<I", len(chunk)) + chunk
        with pytest.raises(ValueError, match=match):
            he.add(public, [payload, bad])


def _last_chunk(payload):
    return he._unpack(payload, SLOTS)[2][-1]


def test_add_refuses_mismatches(public, payload):
    with pytest.raises(ValueError, match="no payloads"):
        he.add(public, [])
    with pytest.raises(ValueError, match="payload 1: 5 values, but payload 0 has 4106"):
        he.add(public, [payload, he.encrypt(public, np.ones(5))])
    other = he.KeyHolder()
    with pytest.raises(ValueError, match="another key"):
        he.add(public, [payload, he.encrypt(other.public_context(), np.ones(SLOTS + 10))])
    with pytest.raises(ValueError, match="another key"):
        other.decrypt(payload)


def test_public_context_encrypts_and_adds_but_cannot_decrypt(holder, public, payload):
    ctx = tenseal.context_from(public)
    assert not ctx.has_secret_key() and ctx.has_public_key()
    summed = he.add(public, [payload, payload])  # the server's whole job, without the secret key
    chunk = tenseal.ckks_vector_from(ctx, _last_chunk(summed))
    with pytest.raises(ValueError, match="secret"):
        chunk.decrypt()
    with pytest.raises(ValueError, match="no secret key"):
        he.KeyHolder.load(public)
    # The secret context is no public context: clients and the server are refused it.
    with pytest.raises(ValueError, match="holds the secret key"):
        he.encrypt(holder.secret_context(), np.ones(3))
    np.testing.assert_allclose(holder.decrypt(summed), 2 * np.linspace(-1, 1, SLOTS + 10), atol=1e-6)


def test_secret_context_round_trip(holder, public, payload):
    restored = he.KeyHolder.load(holder.secret_context())
    assert restored.public_context() == public and restored.key_id == holder.key_id
    np.testing.assert_array_equal(restored.decrypt(payload), holder.decrypt(payload))


def test_key_files(tmp_path):
    public_path, secret_path = he.write_keys(tmp_path / "keys")
    assert (public_path.name, secret_path.name) == ("ckks_public.bin", "ckks_secret.bin")
    assert os.stat(secret_path).st_mode & 0o077 == 0  # the owner's only
    public = he.read_public(public_path)
    holder = he.read_secret(secret_path)
    assert holder.public_context() == public
    x = np.arange(10, dtype=np.float32) / 10
    np.testing.assert_allclose(holder.decrypt(he.encrypt(public, x)), x, atol=1e-6)
    with pytest.raises(FileExistsError, match="overwrite"):
        he.write_keys(tmp_path / "keys")
    assert he.read_secret(secret_path).key_id == holder.key_id  # untouched
    he.write_keys(tmp_path / "keys", overwrite=True)
    assert he.read_secret(secret_path).key_id != holder.key_id
    with pytest.raises(ValueError, match="holds the secret key"):
        he.read_public(secret_path)
    with pytest.raises(ValueError, match="no secret key"):
        he.read_secret(public_path)


def test_nothing_printed(holder, public, capfd):
    # capfd, not capsys: it also catches what TenSEAL's C++ side would write to the stdout descriptor.
    # TenSEAL warns on stdout when a vector exceeds N/2 slots; chunking must keep it quiet.
    x = np.ones(2 * SLOTS + 1)
    holder.decrypt(he.add(public, [he.encrypt(public, x)] * 2))
    out, err = capfd.readouterr()
    assert out == "" and err == ""
