import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedstack.secagg.shamir import MAX_SECRET_BYTES, P, combine, encode_secret, lagrange, recover, split


@st.composite
def sharings(draw):
    """(secret, t, ids, a subset of at least t ids)."""
    secret = draw(st.binary(max_size=MAX_SECRET_BYTES))
    ids = draw(st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=12, unique=True))
    t = draw(st.integers(1, len(ids)))
    subset = draw(st.lists(st.sampled_from(ids), min_size=t, unique=True))
    return secret, t, ids, subset


@settings(max_examples=150, deadline=None)
@given(sharings())
def test_any_t_or_more_shares_recover_the_secret_exactly(case):
    secret, t, ids, subset = case
    shares = split(secret, t, ids)
    assert sorted(shares) == sorted(ids) and all(0 <= s < P for s in shares.values())
    assert combine({i: shares[i] for i in subset}, t) == secret  # leading zero bytes and b"" included
    assert combine({i: shares[i] for i in subset[:t]}, t) == secret


@settings(max_examples=60, deadline=None)
@given(sharings(), st.binary(max_size=MAX_SECRET_BYTES))
def test_t_minus_1_shares_are_consistent_with_every_secret(case, other):
    # Perfect hiding, shown by construction: through the t − 1 shares and the point (0, other) passes a
    # polynomial of degree t − 1, i.e. a sharing of `other` that hands out exactly these t − 1 shares.
    secret, t, ids, _ = case
    shares = split(secret, t, ids)
    seen = {i: shares[i] for i in ids[: t - 1]}
    poly = lagrange({0: encode_secret(other)} | {i + 1: y for i, y in seen.items()})
    alternative = {i: poly(i + 1) for i in ids}
    assert all(alternative[i] == y for i, y in seen.items())
    assert combine(alternative, t) == other


def test_errors():
    with pytest.raises(ValueError, match="1 <= t <= n=3"):
        split(b"x", 4, [0, 1, 2])  # t > n
    with pytest.raises(ValueError, match="1 <= t"):
        split(b"x", 0, [0, 1, 2])
    with pytest.raises(ValueError, match="duplicate"):
        split(b"x", 2, [0, 1, 1])
    with pytest.raises(ValueError, match=">= 0"):
        split(b"x", 1, [-1])
    with pytest.raises(ValueError, match="at most 64"):
        split(bytes(65), 1, [0])
    with pytest.raises(TypeError):
        split("text", 1, [0])
    shares = split(b"secret", 3, range(5))
    with pytest.raises(ValueError, match="at least t=3"):
        combine({0: shares[0], 1: shares[1]}, 3)
    with pytest.raises(ValueError, match=">= 1"):
        combine(shares, 0)
    with pytest.raises(ValueError, match="field element"):
        combine({0: P, 1: 1, 2: 2}, 3)


def test_more_than_t_shares_must_agree():
    shares = split(b"secret", 3, range(5))
    shares[4] = (shares[4] + 1) % P
    with pytest.raises(ValueError, match="inconsistent"):
        combine(shares, 3)
    assert combine({i: shares[i] for i in range(4)}, 3) == b"secret"


def test_shares_are_fresh_and_randomised():
    assert split(b"secret", 2, [0, 1]) != split(b"secret", 2, [0, 1])
    assert split(b"secret", 1, [0, 1]) == {0: encode_secret(b"secret"), 1: encode_secret(b"secret")}  # t = 1


def test_recover_finds_and_names_the_bad_shares():
    secret = os.urandom(32)
    shares = split(secret, 4, range(9))
    for bad in ([], [3], [0, 8], [1, 2, 5]):
        corrupted = {i: (s + random.randrange(1, P)) % P if i in bad else s for i, s in shares.items()}
        assert recover(corrupted, 4, lambda s: s == secret) == (secret, bad)
    # Random corruption: a structured one (say +1 on several shares) can leave a t-subset that still
    # interpolates to the secret, which is then a right answer.
    corrupted = {i: random.randrange(P) if i < 6 else s for i, s in shares.items()}  # only 3 good shares left
    with pytest.raises(ValueError, match="no subset"):
        recover(corrupted, 4, lambda s: s == secret)
    with pytest.raises(ValueError, match="only 3 shares, need t=4"):
        recover({i: shares[i] for i in range(3)}, 4, lambda s: True)
