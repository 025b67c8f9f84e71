"""Homomorphic aggregation of updates with CKKS (TenSEAL): the server adds ciphertexts it cannot read.

CKKS (Cheon, Kim, Kim & Song 2017, "Homomorphic Encryption for Arithmetic of Approximate Numbers",
ASIACRYPT'17) encrypts a vector of real numbers so that adding two ciphertexts gives a ciphertext of
the sum, up to a small error. We use it through TenSEAL (Benaissa et al. 2021, "TenSEAL: A Library
for Encrypted Tensor Operations Using Homomorphic Encryption", ICLR'21 workshop on distributed and
private ML), which wraps Microsoft SEAL.

Three roles:

- the key holder (`KeyHolder`) generates the key pair, hands out the public context and is the only
  one that can `decrypt`; it sees the aggregate only, never an individual update;
- a client `encrypt`s its update under the public context;
- the server `add`s the clients' payloads under the same public context. It holds no secret key, so
  it cannot read an update or the sum.

A vector is cut into chunks of N/2 values (one CKKS ciphertext each: the "slots"), and the chunks
are packed into one self-describing payload (see `encrypt`). Malformed payloads raise ValueError.
The key files of a `fedstack keys` step are written by `write_keys` and read by `read_public` and
`read_secret`.

CKKS gives confidentiality against an honest-but-curious server, not integrity: a client can still
send any vector it likes, and a malicious server could drop or repeat payloads.
"""

from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from .files import write_atomic

MAGIC = b"FSHE"
VERSION = 1
# magic, version, vector length, chunk count, key id (see _key_id)
_HEADER = struct.Struct("<4sBII8s")
_CHUNK_LEN = struct.Struct("<I")

PUBLIC_FILE = "ckks_public.bin"
SECRET_FILE = "ckks_secret.bin"

# Largest total coefficient modulus (bits) for 128-bit classical security with a ternary secret,
# per the Homomorphic Encryption Standard (Albrecht et al. 2018, table 1); SEAL enforces the same.
MAX_MODULUS_BITS_128 = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}


def _tenseal():
    # Imported on first use: TenSEAL takes about 0.4 s to import, and most runs never encrypt.
    from .extras import require

    return require("tenseal", "he", "CKKS homomorphic aggregation")


@dataclass(frozen=True)
class CKKSParams:
    """The CKKS encryption parameters of a key pair.

    poly_modulus_degree: N, the ring dimension (a power of two). One ciphertext holds N/2 values
        (its slots): 4,096 for N = 8192.
    coeff_mod_bit_sizes: the bit sizes of the primes whose product is the coefficient modulus Q.
        The last prime is the "special" prime used only for key switching; each prime between the
        first and the last is one multiplication level. Aggregation only adds, so it uses no level;
        the total, 200 bits here, is what bounds security.
    scale_bits: values are encoded as round(x · 2**scale_bits). Together with N it sets the precision;
        the bits of the first prime above it (20 here) leave room for the integer part of a sum.

    Security: N = 8192 with at most 218 bits of Q gives 128-bit security according to the
    Homomorphic Encryption Standard; the defaults (200 bits) meet it, and SEAL refuses weaker ones.
    Precision (defaults, measured with TenSEAL 0.3.18): the error is absolute, whatever the values'
    magnitude. One vector round-trips within 1.2e-8; the sum of 10 encrypted vectors of values in
    [-1, 1], decrypted, is within 4e-8 of the exact float64 sum (max abs error: 3.1e-8 over 40,960
    values, 3.8e-8 over 199,210).
    The float32 that `KeyHolder.decrypt` returns by default rounds that sum by up to 2.4e-7 more.
    Size: one ciphertext is 2 × N × (primes − 1) coefficients of 8 bytes, about 330 kB serialized,
    so an update grows about 20× over float32. Since aggregation uses no level, (60, 60) would do:
    one data prime, 8× instead of 20×, twice as fast, same precision (benchmarks/he.py).
    """

    poly_modulus_degree: int = 8192
    coeff_mod_bit_sizes: tuple[int, ...] = (60, 40, 40, 60)
    scale_bits: int = 40

    def __post_init__(self):
        n, bits = self.poly_modulus_degree, tuple(self.coeff_mod_bit_sizes)
        object.__setattr__(self, "coeff_mod_bit_sizes", bits)
        if n not in MAX_MODULUS_BITS_128:
            raise ValueError(f"poly_modulus_degree must be one of {sorted(MAX_MODULUS_BITS_128)}, got {n!r}")
        if len(bits) < 2 or not all(isinstance(b, int) and 1 <= b <= 60 for b in bits):
            raise ValueError(f"coeff_mod_bit_sizes needs at least two primes of 1 to 60 bits, got {bits!r}")
        if sum(bits) > MAX_MODULUS_BITS_128[n]:
            raise ValueError(
                f"coeff_mod_bit_sizes total {sum(bits)} bits, above the {MAX_MODULUS_BITS_128[n]} bits that "
                f"N = {n} allows for 128-bit security"
            )
        if not 0 < self.scale_bits < bits[0]:
            raise ValueError(f"scale_bits must be positive and below the first prime's {bits[0]} bits, "
                             f"got {self.scale_bits!r}")

    @property
    def slots(self) -> int:
        """Values per ciphertext: N/2."""
        return self.poly_modulus_degree // 2


def _serialize_public(ctx) -> bytes:
    # Public key only: aggregation needs neither relinearization nor Galois (rotation) keys, and
    # leaving them out makes the file 4× smaller.
    return ctx.serialize(save_public_key=True, save_secret_key=False, save_galois_keys=False,
                         save_relin_keys=False)


def _key_id(public_context: bytes) -> bytes:
    # Names the key pair in every payload: a ciphertext under another key would otherwise add and
    # decrypt without error, to garbage.
    return hashlib.sha256(public_context).digest()[:8]


def _slots(ctx) -> int:
    return ctx.seal_context().data.key_context_data().parms().poly_modulus_degree() // 2


def _public(public_context: bytes):
    """(TenSEAL context, key id, slots) of a public context, checked to hold no secret key."""
    if not isinstance(public_context, bytes):
        raise ValueError(f"public context: expected bytes, got {type(public_context).__name__}")
    return _load_public(public_context)


@lru_cache(maxsize=4)
def _load_public(public_context: bytes):
    # Cached: loading takes about 65 ms, and a client or server uses the same context all run long.
    ts = _tenseal()
    try:
        ctx = ts.context_from(public_context)
    except Exception as e:  # TenSEAL raises ValueError or RuntimeError on a bad stream
        raise ValueError(f"public context: not a TenSEAL context ({e})") from None
    if ctx.has_secret_key():
        raise ValueError("public context: it holds the secret key; clients and the server get the public "
                         "context only (KeyHolder.public_context())")
    if not ctx.has_public_key():
        raise ValueError("public context: it has no public key")
    return ctx, _key_id(public_context), _slots(ctx)


def _pack(n: int, key_id: bytes, chunks: list[bytes]) -> bytes:
    parts = [_HEADER.pack(MAGIC, VERSION, n, len(chunks), key_id)]
    for c in chunks:
        parts += [_CHUNK_LEN.pack(len(c)), c]
    return b"".join(parts)


def _unpack(payload, slots: int, what: str = "payload") -> tuple[int, bytes, list[bytes]]:
    """The vector length, key id and serialized chunks of a payload, its framing checked."""
    if isinstance(payload, (bytearray, memoryview)):
        payload = bytes(payload)
    if not isinstance(payload, bytes):
        raise ValueError(f"{what}: expected bytes, got {type(payload).__name__}")
    if len(payload) < _HEADER.size:
        raise ValueError(f"{what}: truncated header ({len(payload)} bytes, the header has {_HEADER.size})")
    magic, version, n, count, key_id = _HEADER.unpack_from(payload)
    if magic != MAGIC:
        raise ValueError(f"{what}: bad magic {magic!r} (expected {MAGIC!r}): not a CKKS payload")
    if version != VERSION:
        raise ValueError(f"{what}: format version {version} is not supported (expected {VERSION})")
    if n == 0:
        raise ValueError(f"{what}: empty vector")
    if count != math.ceil(n / slots):
        raise ValueError(f"{what}: {count} chunks, but {n} values in chunks of {slots} need {math.ceil(n / slots)}")
    chunks, at = [], _HEADER.size
    for i in range(count):
        if at + _CHUNK_LEN.size > len(payload):
            raise ValueError(f"{what}: truncated at chunk {i} of {count}")
        (size,) = _CHUNK_LEN.unpack_from(payload, at)
        at += _CHUNK_LEN.size
        if at + size > len(payload):
            raise ValueError(f"{what}: truncated in chunk {i} of {count} ({len(payload) - at} of {size} bytes)")
        chunks.append(payload[at:at + size])
        at += size
    if at != len(payload):
        raise ValueError(f"{what}: {len(payload) - at} bytes after the last chunk")
    return n, key_id, chunks


def _chunk_sizes(n: int, slots: int) -> list[int]:
    return [min(slots, n - start) for start in range(0, n, slots)]


def _ciphertext(ctx, data: bytes, size: int, what: str):
    """One chunk deserialized, holding `size` values."""
    try:
        vec = _tenseal().ckks_vector_from(ctx, data)
    except Exception as e:  # ValueError on a bad stream, RuntimeError on coefficients out of range
        raise ValueError(f"{what}: not a CKKS ciphertext for this context ({e})") from None
    if vec.size() != size:
        raise ValueError(f"{what}: holds {vec.size()} values, expected {size}")
    return vec


def encrypt(public_context: bytes, vector: np.ndarray) -> bytes:
    """A flat vector encrypted under the public context, as one payload (what a client sends).

    Payload, little-endian: magic b"FSHE", version (uint8), vector length n (uint32), chunk count
    (uint32, ceil(n / slots)), key id (8 bytes: SHA-256 of the public context, truncated), then per
    chunk a uint32 byte length and the serialized TenSEAL CKKS vector of up to N/2 values.
    """
    ctx, key_id, slots = _public(public_context)
    v = np.asarray(vector, dtype=np.float64)
    if v.ndim != 1:
        raise ValueError(f"encrypt: expected a flat vector, got shape {v.shape}")
    if v.size == 0 or v.size > 0xFFFFFFFF:
        raise ValueError(f"encrypt: {v.size} values; the length must be in [1, 2**32 - 1]")
    if not np.isfinite(v).all():
        raise ValueError("encrypt: the vector has non-finite values")
    ts = _tenseal()
    # One ciphertext per N/2 values: TenSEAL would accept a longer vector, but then it prints a
    # warning to stdout and spreads it over ciphertexts in its own way.
    chunks = [ts.ckks_vector(ctx, v[start:start + slots]).serialize() for start in range(0, v.size, slots)]
    return _pack(v.size, key_id, chunks)


def key_id(public_context: bytes) -> bytes:
    """The 8-byte id that names a public context's key pair in every payload (ValueError if it is no public context)."""
    return _public(public_context)[1]


def add(public_context: bytes, payloads: list[bytes], length: int | None = None) -> bytes:
    """The homomorphic sum of payloads from `encrypt` (what the server does), as a payload of the same format.

    Refuses (ValueError) an empty list, malformed payloads, payloads under another key, and payloads
    of different lengths, or of another length than `length` when given.
    """
    ctx, key_id, slots = _public(public_context)
    if not payloads:
        raise ValueError("add: no payloads")
    # Every payload's framing is checked before any ciphertext is parsed.
    unpacked = [_unpack(p, slots, f"payload {i}") for i, p in enumerate(payloads)]
    n = unpacked[0][0]
    for i, (n_i, key_i, _) in enumerate(unpacked):
        if key_i != key_id:
            raise ValueError(f"payload {i}: encrypted under another key (key id {key_i.hex()}, "
                             f"this public context's is {key_id.hex()})")
        if n_i != n:
            raise ValueError(f"payload {i}: {n_i} values, but payload 0 has {n}")
    if length is not None and n != length:
        raise ValueError(f"payload 0: {n} values, expected {length}")
    # Chunk by chunk, so only one chunk of each payload is deserialized at a time.
    summed = []
    for j, size in enumerate(_chunk_sizes(n, slots)):
        total = _ciphertext(ctx, unpacked[0][2][j], size, f"payload 0 chunk {j}")
        for i in range(1, len(unpacked)):
            vec = _ciphertext(ctx, unpacked[i][2][j], size, f"payload {i} chunk {j}")
            try:
                total.add_(vec)
            except Exception as e:  # a ciphertext at another scale or level
                raise ValueError(f"payload {i} chunk {j}: cannot be added ({e})") from None
        summed.append(total.serialize())
    return _pack(n, key_id, summed)


class KeyHolder:
    """The holder of a CKKS secret key: hands out the public context and decrypts aggregates.

    `KeyHolder(params)` generates a fresh key pair; `KeyHolder.load(secret_context)` restores one.
    """

    def __init__(self, params: CKKSParams | None = None):
        params = params or CKKSParams()
        ts = _tenseal()
        ctx = ts.context(ts.SCHEME_TYPE.CKKS, params.poly_modulus_degree,
                         coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes))
        ctx.global_scale = 2.0**params.scale_bits
        self._set(ctx)

    @classmethod
    def load(cls, secret_context: bytes) -> KeyHolder:
        """The key holder of a `secret_context()`; ValueError if the bytes hold no secret key."""
        if not isinstance(secret_context, bytes):
            raise ValueError(f"secret context: expected bytes, got {type(secret_context).__name__}")
        try:
            ctx = _tenseal().context_from(secret_context)
        except Exception as e:
            raise ValueError(f"secret context: not a TenSEAL context ({e})") from None
        if not ctx.has_secret_key():
            raise ValueError("secret context: it holds no secret key (is it the public context?)")
        holder = cls.__new__(cls)
        holder._set(ctx)
        return holder

    def _set(self, ctx) -> None:
        self._ctx = ctx
        self._public = _serialize_public(ctx)
        self.key_id = _key_id(self._public)
        self.slots = _slots(ctx)

    def public_context(self) -> bytes:
        """The context without the secret key: what clients (to encrypt) and the server (to add) get."""
        return self._public

    def secret_context(self) -> bytes:
        """The context with the secret key, for the key holder's file only."""
        return self._ctx.serialize(save_public_key=True, save_secret_key=True, save_galois_keys=False,
                                   save_relin_keys=False)

    def decrypt(self, payload: bytes, dtype=np.float32) -> np.ndarray:
        """The vector a payload encrypts (for the server's sum: the aggregate), as `dtype`."""
        n, key_id, chunks = _unpack(payload, self.slots)
        if key_id != self.key_id:
            raise ValueError(f"payload: encrypted under another key (key id {key_id.hex()}, "
                             f"this key holder's is {self.key_id.hex()})")
        out = np.empty(n, dtype=dtype)
        for j, (data, size) in enumerate(zip(chunks, _chunk_sizes(n, self.slots))):
            start = j * self.slots
            out[start:start + size] = _ciphertext(self._ctx, data, size, f"payload chunk {j}").decrypt()
        if not np.isfinite(out).all():
            raise ValueError("payload: decrypts to non-finite values (a corrupt ciphertext?)")
        return out


def write_keys(directory, params: CKKSParams | None = None, *, overwrite: bool = False) -> tuple[Path, Path]:
    """Generates a key pair and writes it to `directory` as ckks_public.bin and ckks_secret.bin.

    Returns (public path, secret path). The secret file is readable by its owner only. Refuses
    (FileExistsError) if either file exists, unless `overwrite`: a new secret key makes every
    payload under the old one unreadable.
    """
    directory = Path(directory)
    public_path, secret_path = directory / PUBLIC_FILE, directory / SECRET_FILE
    if not overwrite:
        for p in (secret_path, public_path):
            if p.exists():
                raise FileExistsError(f"{p} exists; pass overwrite=True to replace the CKKS keys")
    holder = KeyHolder(params)
    directory.mkdir(parents=True, exist_ok=True)
    # Through an fsynced temporary file created 0600 and renamed: the secret is never readable by others,
    # and a crash or power cut leaves either the old key or the new one, never a truncated file.
    write_atomic(secret_path, holder.secret_context(), private=True)
    write_atomic(public_path, holder.public_context())
    return public_path, secret_path


def read_public(path) -> bytes:
    """The public context in a file, checked to be one (ValueError if it holds the secret key)."""
    data = Path(path).read_bytes()
    _public(data)
    return data


def read_secret(path) -> KeyHolder:
    """The key holder whose secret context is in a file."""
    return KeyHolder.load(Path(path).read_bytes())
