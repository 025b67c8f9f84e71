import pytest
from hypothesis import given, settings, strategies as st

from fedstack.transport.wire import assemble, chunks


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=5000), st.integers(1, 700))
def test_chunks_reassemble_to_the_original(data, size):
    pieces = list(chunks(data, size))
    assert all(0 < len(p) <= size for p in pieces)
    assert assemble(pieces, len(data), limit=10_000) == data


def test_assemble_refuses_lies_and_oversize():
    with pytest.raises(ValueError, match="over the limit"):
        assemble([b"x"], 11, limit=10)
    with pytest.raises(ValueError, match="more than the announced"):
        assemble([b"abc", b"def"], 4, limit=10)
    with pytest.raises(ValueError, match="received 3"):
        assemble([b"abc"], 4, limit=10)
