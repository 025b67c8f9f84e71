"""The protocol's messages and their byte format: explicit big-endian struct fields, never pickle.

Every message is a header, then its fields:

    byte 0       message type (TYPE_ID: 1 AdvertiseKeys ... 7 Unmask)
    byte 1       format version (FORMAT_VERSION = 1)
    bytes 2-5    uint32 client_id: the sender of a client message, the recipient of a server message

Lists are a uint32 count followed by their entries; variable-length byte strings are a uint32 length then
the bytes; public keys and commitments are a fixed 32 bytes, Shamir shares a fixed 66 (big-endian field
element). A masked vector is uint8 bits, uint32 length, then length little-endian uint32 (bits ≤ 32) or
uint64 words. `from_bytes` (and `decode`, which reads the type from the header) trusts nothing: a wrong
type or version, a truncated or over-long input, a repeated id in a list, a share that is not a field element
or a vector entry ≥ 2**bits raise ValueError. Counts are checked against the bytes present before any
allocation.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .crypto import KEY_BYTES, mask_dtype
from .shamir import P, SHARE_BYTES

FORMAT_VERSION = 1
MAX_LENGTH = 1 << 28  # longest masked vector accepted: 268,435,456 entries
REASONS = {1: "aead", 2: "malformed"}  # why a client could not use a share ciphertext (Unmask.rejected)
REASON_CODES = {name: code for code, name in REASONS.items()}
_HEADER = struct.Struct(">BBI")


class _Reader:
    """Reads fields off a byte string, raising ValueError at the first thing that does not fit."""

    def __init__(self, data):
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ValueError(f"expected bytes, got {type(data).__name__}")
        self.data, self.pos = bytes(data), 0

    def take(self, n: int) -> bytes:
        if n > len(self.data) - self.pos:
            raise ValueError(f"truncated message: needed {n} bytes at offset {self.pos}, {len(self.data)} in all")
        self.pos += n
        return self.data[self.pos - n : self.pos]

    def u8(self) -> int:
        return self.take(1)[0]

    def u32(self) -> int:
        return struct.unpack(">I", self.take(4))[0]

    def blob(self) -> bytes:
        return self.take(self.u32())

    def share(self) -> int:
        value = int.from_bytes(self.take(SHARE_BYTES), "big")
        if value >= P:
            raise ValueError("share is not a field element (>= 2**521 − 1)")
        return value

    def count(self, min_entry_bytes: int) -> int:
        n = self.u32()
        if n * min_entry_bytes > len(self.data) - self.pos:
            raise ValueError(f"list of {n} entries cannot fit in the {len(self.data) - self.pos} bytes left")
        return n

    def done(self) -> None:
        if self.pos != len(self.data):
            raise ValueError(f"{len(self.data) - self.pos} trailing bytes after the message")


def _blob(b: bytes) -> bytes:
    return struct.pack(">I", len(b)) + bytes(b)


def _share(value: int) -> bytes:
    if not 0 <= value < P:
        raise ValueError("share is not a field element")
    return value.to_bytes(SHARE_BYTES, "big")


def _key(b: bytes) -> bytes:
    if len(b) != KEY_BYTES:
        raise ValueError(f"keys and commitments are {KEY_BYTES} bytes, got {len(b)}")
    return bytes(b)


def _unique(ids, what: str) -> None:
    if len(set(ids)) != len(ids):
        raise ValueError(f"{what} lists a client id twice")


class _Message:
    TYPE_ID: ClassVar[int]

    def to_bytes(self) -> bytes:
        """The message in the wire format of this module."""
        return _HEADER.pack(self.TYPE_ID, FORMAT_VERSION, self.client_id) + self._fields()

    @classmethod
    def from_bytes(cls, data) -> _Message:
        """The message `to_bytes` wrote; ValueError on anything malformed (see the module docstring)."""
        r = _Reader(data)
        type_id, version, client_id = _HEADER.unpack(r.take(_HEADER.size))
        if type_id != cls.TYPE_ID:
            raise ValueError(f"message type {type_id} is not {cls.__name__} ({cls.TYPE_ID})")
        if version != FORMAT_VERSION:
            raise ValueError(f"unsupported format version {version} (this reader knows {FORMAT_VERSION})")
        msg = cls._read(client_id, r)
        r.done()
        return msg


@dataclass(frozen=True)
class AdvertiseKeys(_Message):
    """Round 0, client → server: the client's public keys c_u^PK (channel) and s_u^PK (masks)."""

    TYPE_ID: ClassVar[int] = 1
    client_id: int
    c_pk: bytes
    s_pk: bytes

    def _fields(self) -> bytes:
        return _key(self.c_pk) + _key(self.s_pk)

    @classmethod
    def _read(cls, client_id, r):
        return cls(client_id, r.take(KEY_BYTES), r.take(KEY_BYTES))


@dataclass(frozen=True)
class ShareKeysRequest(_Message):
    """Round 1, server → client u: (v, c_v^PK, s_v^PK) for u's neighbours v in U1."""

    TYPE_ID: ClassVar[int] = 2
    client_id: int
    neighbours: tuple[tuple[int, bytes, bytes], ...]

    def _fields(self) -> bytes:
        entries = [struct.pack(">I", v) + _key(c) + _key(s) for v, c, s in self.neighbours]
        return struct.pack(">I", len(entries)) + b"".join(entries)

    @classmethod
    def _read(cls, client_id, r):
        nbrs = tuple((r.u32(), r.take(KEY_BYTES), r.take(KEY_BYTES)) for _ in range(r.count(4 + 2 * KEY_BYTES)))
        _unique([v for v, _, _ in nbrs], "ShareKeysRequest")
        return cls(client_id, nbrs)


@dataclass(frozen=True)
class ShareKeys(_Message):
    """Round 1, client u → server: SHA-256(b_u), and for each neighbour v the encrypted shares (v, e_uv)."""

    TYPE_ID: ClassVar[int] = 3
    client_id: int
    b_commitment: bytes
    ciphertexts: tuple[tuple[int, bytes], ...]

    def _fields(self) -> bytes:
        entries = [struct.pack(">I", v) + _blob(e) for v, e in self.ciphertexts]
        return _key(self.b_commitment) + struct.pack(">I", len(entries)) + b"".join(entries)

    @classmethod
    def _read(cls, client_id, r):
        commitment = r.take(KEY_BYTES)
        cts = tuple((r.u32(), r.blob()) for _ in range(r.count(8)))
        _unique([v for v, _ in cts], "ShareKeys")
        return cls(client_id, commitment, cts)


@dataclass(frozen=True)
class MaskedInputRequest(_Message):
    """Round 2, server → client v: the ciphertexts (u, e_uv) from v's neighbours u in U2 (so, who is in U2)."""

    TYPE_ID: ClassVar[int] = 4
    client_id: int
    ciphertexts: tuple[tuple[int, bytes], ...]

    def _fields(self) -> bytes:
        entries = [struct.pack(">I", u) + _blob(e) for u, e in self.ciphertexts]
        return struct.pack(">I", len(entries)) + b"".join(entries)

    @classmethod
    def _read(cls, client_id, r):
        cts = tuple((r.u32(), r.blob()) for _ in range(r.count(8)))
        _unique([u for u, _ in cts], "MaskedInputRequest")
        return cls(client_id, cts)


@dataclass(frozen=True, eq=False)
class MaskedInput(_Message):
    """Round 2, client u → server: y_u, the masked encoding of u's vector, integers mod 2**bits."""

    TYPE_ID: ClassVar[int] = 5
    client_id: int
    bits: int
    y: np.ndarray

    def _fields(self) -> bytes:
        y = np.ascontiguousarray(self.y, dtype=mask_dtype(self.bits))
        return struct.pack(">BI", self.bits, y.size) + y.tobytes()

    @classmethod
    def _read(cls, client_id, r):
        bits, length = r.u8(), r.u32()
        dtype = mask_dtype(bits)  # ValueError unless 1..64
        if length > MAX_LENGTH:
            raise ValueError(f"masked vector of length {length} exceeds the maximum {MAX_LENGTH}")
        y = np.frombuffer(r.take(length * dtype.itemsize), dtype=dtype).copy()
        if bits < 8 * dtype.itemsize and np.any(y >> dtype.type(bits)):
            raise ValueError(f"masked vector holds values >= 2**{bits}")
        return cls(client_id, bits, y)


@dataclass(frozen=True)
class UnmaskRequest(_Message):
    """Round 3, server → client u: the survivors U3 among u and its neighbours."""

    TYPE_ID: ClassVar[int] = 6
    client_id: int
    survivors: tuple[int, ...]

    def _fields(self) -> bytes:
        return struct.pack(f">I{len(self.survivors)}I", len(self.survivors), *self.survivors)

    @classmethod
    def _read(cls, client_id, r):
        survivors = tuple(r.u32() for _ in range(r.count(4)))
        _unique(survivors, "UnmaskRequest")
        return cls(client_id, survivors)


@dataclass(frozen=True)
class Unmask(_Message):
    """Round 3, client → server: b-shares of surviving peers, s^SK-shares of dropped ones, and the peers whose
    share ciphertext the client could not use, with the reason (REASONS)."""

    TYPE_ID: ClassVar[int] = 7
    client_id: int
    b_shares: tuple[tuple[int, int], ...]
    s_shares: tuple[tuple[int, int], ...]
    rejected: tuple[tuple[int, str], ...] = ()

    def _fields(self) -> bytes:
        out = [struct.pack(">I", len(self.b_shares))] + [struct.pack(">I", u) + _share(x) for u, x in self.b_shares]
        out += [struct.pack(">I", len(self.s_shares))] + [struct.pack(">I", u) + _share(x) for u, x in self.s_shares]
        out += [struct.pack(">I", len(self.rejected))]
        out += [struct.pack(">IB", u, REASON_CODES[why]) for u, why in self.rejected]
        return b"".join(out)

    @classmethod
    def _read(cls, client_id, r):
        b_shares = tuple((r.u32(), r.share()) for _ in range(r.count(4 + SHARE_BYTES)))
        s_shares = tuple((r.u32(), r.share()) for _ in range(r.count(4 + SHARE_BYTES)))
        rejected = []
        for _ in range(r.count(5)):
            u, code = r.u32(), r.u8()
            if code not in REASONS:
                raise ValueError(f"unknown rejection reason code {code}")
            rejected.append((u, REASONS[code]))
        _unique([u for u, _ in b_shares + s_shares], "Unmask")  # never both shares of one peer
        return cls(client_id, b_shares, s_shares, tuple(rejected))


MESSAGE_TYPES = {m.TYPE_ID: m for m in (AdvertiseKeys, ShareKeysRequest, ShareKeys, MaskedInputRequest,
                                        MaskedInput, UnmaskRequest, Unmask)}


def decode(data) -> _Message:
    """Any message of this module from its bytes, by the type in its header; ValueError if malformed."""
    if len(data) < 1 or data[0] not in MESSAGE_TYPES:
        raise ValueError(f"unknown message type {data[0] if len(data) else None}")
    return MESSAGE_TYPES[data[0]].from_bytes(data)


_SHARE_PLAINTEXT = struct.Struct(f">II{SHARE_BYTES}s{SHARE_BYTES}s")


def pack_share_plaintext(u: int, v: int, s_share: int, b_share: int) -> bytes:
    """The plaintext of e_uv: u ‖ v ‖ u's share of s_u^SK for v ‖ u's share of b_u for v."""
    return _SHARE_PLAINTEXT.pack(u, v, _share(s_share), _share(b_share))


def unpack_share_plaintext(data: bytes) -> tuple[int, int, int, int]:
    """(u, v, s_share, b_share) from `pack_share_plaintext`'s output; ValueError if malformed."""
    if len(data) != _SHARE_PLAINTEXT.size:
        raise ValueError(f"share plaintext has {len(data)} bytes, expected {_SHARE_PLAINTEXT.size}")
    u, v, s, b = _SHARE_PLAINTEXT.unpack(data)
    s, b = int.from_bytes(s, "big"), int.from_bytes(b, "big")
    if s >= P or b >= P:
        raise ValueError("share is not a field element")
    return u, v, s, b
