"""The cryptographic primitives of secure aggregation: key agreement, authenticated encryption and the PRG.

KA (Bonawitz et al. 2017, §3): X25519, with the shared point hashed by HKDF-SHA256 into a 32-byte key whose
`label` names its purpose, so one exchange never yields the same key for two uses.
AE: AES-256-GCM with a random 96-bit nonce sent in front of the ciphertext.
PRG: AES-256-CTR keyed by the 32-byte seed, read as little-endian integers.
"""

from __future__ import annotations

import os

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16


def generate_keypair() -> tuple[bytes, bytes]:
    """A fresh X25519 key pair as raw 32-byte (secret key, public key)."""
    sk = X25519PrivateKey.generate()
    return sk.private_bytes_raw(), sk.public_key().public_bytes_raw()


def public_key(secret_key: bytes) -> bytes:
    """The X25519 public key of a raw 32-byte secret key (how a reconstructed s_u^SK is checked against s_u^PK)."""
    return X25519PrivateKey.from_private_bytes(bytes(secret_key)).public_key().public_bytes_raw()


def agree(secret_key: bytes, peer_public_key: bytes, label: bytes) -> bytes:
    """The 32-byte key that both ends of an X25519 exchange derive for the purpose named by `label`.

    ValueError if a key is not 32 bytes or the peer's key is a low-order point (the exchange would be all zero).
    """
    shared = X25519PrivateKey.from_private_bytes(bytes(secret_key)).exchange(
        X25519PublicKey.from_public_bytes(bytes(peer_public_key))
    )
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=label).derive(shared)


def encrypt(key: bytes, plaintext: bytes, associated_data: bytes) -> bytes:
    """nonce ‖ AES-GCM ciphertext ‖ tag of `plaintext`, authenticating `associated_data` too."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated_data)


def decrypt(key: bytes, ciphertext: bytes, associated_data: bytes) -> bytes:
    """The plaintext of `encrypt`'s output; ValueError if it was tampered with, truncated or bound to other data."""
    if len(ciphertext) < NONCE_BYTES + TAG_BYTES:
        raise ValueError(f"ciphertext of {len(ciphertext)} bytes is shorter than nonce + tag")
    try:
        return AESGCM(key).decrypt(ciphertext[:NONCE_BYTES], ciphertext[NONCE_BYTES:], associated_data)
    except InvalidTag:
        raise ValueError("ciphertext failed authentication (tampered, or the wrong key or associated data)") from None


def mask_dtype(bits: int) -> np.dtype:
    """The integer type vectors mod 2**bits live in: uint32 up to 32 bits, uint64 above (little-endian)."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 64:
        raise ValueError(f"bits must be an integer in 1..64, got {bits!r}")
    return np.dtype("<u4") if bits <= 32 else np.dtype("<u8")


def prg_mask(seed: bytes, length: int, bits: int) -> np.ndarray:
    """`length` integers uniform mod 2**bits expanded from a 32-byte seed (the PRG of Bonawitz et al.).

    Deterministic: the same seed gives the same vector on every machine. The result is writable.
    """
    if len(seed) != KEY_BYTES:
        raise ValueError(f"PRG seed must be {KEY_BYTES} bytes, got {len(seed)}")
    if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 0:
        raise ValueError(f"length must be an integer >= 0, got {length!r}")
    dtype = mask_dtype(bits)
    nbytes = int(length) * dtype.itemsize
    # The keystream is the encryption of zeros; each seed keys exactly one stream, so a fixed nonce is safe.
    out = bytearray(nbytes + 15)  # update_into wants room for one block minus a byte beyond the input
    Cipher(algorithms.AES(bytes(seed)), modes.CTR(bytes(16))).encryptor().update_into(bytes(nbytes), out)
    mask = np.frombuffer(out, dtype=dtype, count=int(length))
    if bits not in (32, 64):
        # Low bits of uniform words are uniform.
        mask &= dtype.type((1 << bits) - 1)
    return mask
