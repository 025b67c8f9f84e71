"""Chunking of large byte strings into stream messages, and the channel and server options."""

from __future__ import annotations

from typing import Iterable, Iterator

from . import CHUNK_BYTES, MAX_MESSAGE_BYTES

GRPC_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]


def chunks(data: bytes, size: int = CHUNK_BYTES) -> Iterator[bytes]:
    """`data` in pieces of at most `size` bytes (nothing for empty data)."""
    view = memoryview(data)
    for start in range(0, len(view), size):
        yield bytes(view[start:start + size])


def assemble(pieces: Iterable[bytes], expected: int, limit: int) -> bytearray:
    """Join chunks, refusing more than `expected` bytes or more than `limit`.

    A bytearray, so NumPy views of it are writable and nothing is copied once more.
    """
    if expected > limit:
        raise ValueError(f"announced {expected} bytes, over the limit of {limit}")
    out = bytearray()
    for piece in pieces:
        out += piece
        if len(out) > expected:
            raise ValueError(f"more than the announced {expected} bytes")
    if len(out) != expected:
        raise ValueError(f"announced {expected} bytes, received {len(out)}")
    return out


def assemble_parts(messages: Iterable, expected: dict[str, int]) -> dict[str, bytearray]:
    """Join the chunks of a stream whose messages carry one of several byte fields (a oneof `part`: a task's
    params, then a device's first personal part), refusing a field not in `expected` or more than its bytes."""
    out = {name: bytearray() for name in expected}
    for message in messages:
        name = message.WhichOneof("part")
        if name not in out:
            raise ValueError(f"unexpected {name or 'empty'} message in the stream")
        out[name] += getattr(message, name)
        if len(out[name]) > expected[name]:
            raise ValueError(f"more than the announced {expected[name]} bytes of {name}")
    for name, data in out.items():
        if len(data) != expected[name]:
            raise ValueError(f"announced {expected[name]} bytes of {name}, received {len(data)}")
    return out
