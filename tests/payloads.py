"""Checks shared by the codec tests: a payload cut short or padded must be refused."""

import pytest

from fedstack.codec import CodecContext

CTX = CodecContext(round=3, client_id=7, seed=11)


def assert_truncated_and_padded_payloads_rejected(codec, payload: bytes, ctx=CTX) -> None:
    """Every proper prefix of `payload`, and `payload` plus one byte, raise ValueError on decode."""
    for cut in range(len(payload)):
        with pytest.raises(ValueError):
            codec.decode(payload[:cut], ctx)
    with pytest.raises(ValueError):
        codec.decode(payload + b"\x00", ctx)
