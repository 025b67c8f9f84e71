import dataclasses
import math
import secrets

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedstack.secagg import (
    STAGES,
    SecAggAbort,
    SecAggClient,
    SecAggParams,
    SecAggServer,
    UnmaskRequest,
    neighbours,
    simulate_round,
)
from fedstack.secagg.crypto import encrypt
from fedstack.secagg.messages import pack_share_plaintext
from fedstack.secagg.protocol import _share_ad
from fedstack.secagg.shamir import P


def vectors_for(n, length=8, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    return {u: rng.uniform(-scale, scale, length) for u in range(n)}


def assert_secure_sum(result, vectors, params, survivors=None):
    total, u3 = result
    if survivors is not None:
        assert u3 == tuple(sorted(survivors))
    clipped = sum(np.clip(vectors[u], -params.clip, params.clip) for u in u3)
    assert total.dtype == np.float64
    np.testing.assert_allclose(total, clipped, rtol=0, atol=len(u3) * 2.0 ** -(params.frac_bits + 1) + 1e-12)


def drive(params, vectors, drop_after=None, on_share_keys=None, on_unmask=None):
    """All rounds in-process like simulate_round, with hooks that edit a round's messages in transit."""
    drop_after = drop_after or {}
    last = {u: STAGES.index(drop_after[u]) if u in drop_after else 4 for u in vectors}
    cohort = sorted(vectors)
    server = SecAggServer(params, cohort)
    clients = {u: SecAggClient(u, params, cohort) for u in cohort}
    requests = server.share_keys_requests([clients[u].advertise_keys() for u in cohort if last[u] > 0])
    replies = [clients[u].share_keys(r) for u, r in requests.items() if last[u] > 1]
    requests = server.masked_input_requests((on_share_keys or list)(replies))
    requests = server.unmask_requests([clients[u].masked_input(r, vectors[u]) for u, r in requests.items()
                                       if last[u] > 2])
    replies = [clients[u].unmask(r) for u, r in requests.items() if last[u] > 3]
    return server, clients, lambda: server.aggregate((on_unmask or list)(replies))


@st.composite
def rounds(draw):
    n = draw(st.integers(2, 8))
    k = draw(st.sampled_from([None] + [k for k in range(1, n - 1) if k % 2 == 0 or n % 2 == 0]))
    holders = n if k is None else k + 1
    t = draw(st.integers(holders // 2 + 1, holders))
    length = draw(st.integers(1, 6))
    vectors = {u: np.array(draw(st.lists(st.floats(-3, 3), min_size=length, max_size=length))) for u in range(n)}
    # Up to one dropout more than the complete graph tolerates, each after a random stage.
    dropped = draw(st.permutations(range(n)))[: draw(st.integers(0, n - t + 1))]
    drop_after = {u: draw(st.sampled_from(STAGES)) for u in dropped}
    params = SecAggParams(threshold=t, k=k, clip=2.0, frac_bits=draw(st.integers(8, 20)),
                          bits=draw(st.sampled_from([32, 40, 62])), graph_seed=draw(st.integers(0, 2**64 - 1)))
    return vectors, params, drop_after


@settings(max_examples=200, deadline=None)
@given(rounds())
def test_secure_sum_equals_plain_sum_under_dropouts(case):
    vectors, params, drop_after = case
    last = {u: STAGES.index(drop_after[u]) if u in drop_after else 4 for u in vectors}
    u1, u2, u3, u4 = ({u for u in vectors if last[u] > r} for r in range(4))
    try:
        total, survivors = simulate_round(vectors, params, drop_after)
    except SecAggAbort:
        # With the complete graph the round aborts exactly when some round has fewer than t clients;
        # with SecAgg+ also when some neighbourhood does.
        assert params.k is not None or min(map(len, (u1, u2, u3, u4))) < params.threshold
        return
    assert set(survivors) <= u3 and len(survivors) >= params.threshold
    if params.k is None:
        assert set(survivors) == u3
    assert_secure_sum((total, survivors), vectors, params)


def test_dropouts_are_unmasked_via_shares():
    vectors = vectors_for(7)
    params = SecAggParams(threshold=4)
    # 1 drops before masking (its pairwise masks with U3 are rebuilt from s_1^SK shares); 4 masks its input
    # and then vanishes (its input counts, its b_4 comes from the others' shares).
    result = simulate_round(vectors, params, {1: "share_keys", 4: "masked_input", 6: "advertise_keys"})
    assert_secure_sum(result, vectors, params, survivors=[0, 2, 3, 4, 5])
    assert_secure_sum(simulate_round(vectors, params), vectors, params, survivors=range(7))
    assert_secure_sum(simulate_round(vectors, params, through_bytes=False), vectors, params, survivors=range(7))


@pytest.mark.parametrize("stage, message", [
    ("start", "only 2 clients in U1, need t=3"),
    ("advertise_keys", "only 2 clients in U2, need t=3"),
    ("share_keys", "only 2 clients sent masked input"),
    ("masked_input", "only 2 clients answered the unmasking round"),
])
def test_fewer_than_t_survivors_abort(stage, message):
    vectors = vectors_for(5)
    with pytest.raises(SecAggAbort, match=message):
        simulate_round(vectors, SecAggParams(threshold=3), {0: stage, 1: stage, 2: stage})
    assert_secure_sum(simulate_round(vectors, SecAggParams(threshold=3), {0: stage, 1: stage}), vectors,
                      SecAggParams(threshold=3), survivors=[2, 3, 4] if stage != "masked_input" else range(5))


def chi_square_uniform(values, bins=256):
    counts = np.bincount(values, minlength=bins)
    expected = values.size / bins
    return float(((counts - expected) ** 2 / expected).sum())


def chi_square_critical(df, z=4.75):
    # Wilson–Hilferty: the (1 − 1e-6) quantile of χ²(df), z being the standard normal's.
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def test_masked_input_looks_uniform_to_the_server():
    params = SecAggParams(threshold=3)
    vectors = vectors_for(5, length=1 << 16, scale=0.5)
    server = SecAggServer(params, range(5))
    clients = {u: SecAggClient(u, params, range(5)) for u in range(5)}
    requests = server.share_keys_requests([c.advertise_keys() for c in clients.values()])
    requests = server.masked_input_requests([clients[u].share_keys(r) for u, r in requests.items()])
    seen = clients[0].masked_input(requests[0], vectors[0]).y
    plain = params.fixed_point.encode(vectors[0])
    critical = chi_square_critical(255)  # ≈ 377
    for shift in (24, 16, 8, 0):  # each byte of the 32-bit words
        assert chi_square_uniform((seen >> shift) & 0xFF) < critical
    assert chi_square_uniform(plain >> 24) > 100 * critical  # the top byte of a small value is 0 or 255


def test_tampered_ciphertext_is_rejected_and_counted():
    vectors, params = vectors_for(5), SecAggParams(threshold=3)

    def flip_one(replies):  # a bit flipped in 0's shares for 1, on the way through the server
        out = []
        for m in replies:
            if m.client_id == 0:
                cts = tuple((v, e[:-1] + bytes([e[-1] ^ 1]) if v == 1 else e) for v, e in m.ciphertexts)
                m = dataclasses.replace(m, ciphertexts=cts)
            out.append(m)
        return out

    server, _, aggregate = drive(params, vectors, on_share_keys=flip_one)
    assert_secure_sum(aggregate(), vectors, params, survivors=range(5))
    assert server.rejected == {"aead": 1}

    def flip_many(replies):  # now b_0 has only 2 intact shares (0's own and 4's): below t
        out = []
        for m in replies:
            if m.client_id == 0:
                cts = tuple((v, e[:-1] + bytes([e[-1] ^ 1]) if v in (1, 2, 3) else e) for v, e in m.ciphertexts)
                m = dataclasses.replace(m, ciphertexts=cts)
            out.append(m)
        return out

    server, _, aggregate = drive(params, vectors, on_share_keys=flip_many)
    with pytest.raises(SecAggAbort, match="cannot rebuild b_u of client 0: only 2 shares, need t=3"):
        aggregate()
    assert server.rejected == {"aead": 3}


def test_malformed_share_plaintext_is_rejected_and_counted():
    vectors, params = vectors_for(5), SecAggParams(threshold=3)
    clients_ref = {}

    def misaddress(replies):  # 0's shares for 1 authenticate, but name the wrong recipient inside
        client0 = clients_ref["clients"][0]
        forged = encrypt(client0._channel[1], pack_share_plaintext(0, 2, 1, 1), _share_ad(params, 0, 1))
        return [dataclasses.replace(m, ciphertexts=tuple((v, forged if v == 1 else e) for v, e in m.ciphertexts))
                if m.client_id == 0 else m for m in replies]

    cohort = range(5)
    server = SecAggServer(params, cohort)
    clients_ref["clients"] = clients = {u: SecAggClient(u, params, cohort) for u in cohort}
    requests = server.share_keys_requests([c.advertise_keys() for c in clients.values()])
    requests = server.masked_input_requests(misaddress([clients[u].share_keys(r) for u, r in requests.items()]))
    requests = server.unmask_requests([clients[u].masked_input(r, vectors[u]) for u, r in requests.items()])
    assert_secure_sum(server.aggregate([clients[u].unmask(r) for u, r in requests.items()]), vectors, params)
    assert server.rejected == {"malformed": 1}


def corrupt_shares(kind, peer, holders):
    # Random values, as a corruption in transit would give: a structured one (the same offset on several
    # shares) can conspire to still interpolate to the right secret on small ids, which is then accepted.
    def edit(replies):
        out = []
        for m in replies:
            if m.client_id in holders:
                field = "b_shares" if kind == "b" else "s_shares"
                shares = tuple((u, secrets.randbelow(P) if u == peer else x) for u, x in getattr(m, field))
                m = dataclasses.replace(m, **{field: shares})
            out.append(m)
        return out
    return edit


@pytest.mark.parametrize("kind", ["b", "s"])
def test_corrupted_shares_are_rejected_and_the_sum_is_still_right(kind):
    vectors, params = vectors_for(7), SecAggParams(threshold=4)
    drop = {3: "share_keys"} if kind == "s" else {}  # s-shares of 3 are revealed only if 3 dropped
    survivors = [u for u in range(7) if u not in drop]
    server, _, aggregate = drive(params, vectors, drop, on_unmask=corrupt_shares(kind, 3, {0, 5}))
    assert_secure_sum(aggregate(), vectors, params, survivors=survivors)
    assert server.rejected == {"verification": 2}
    # Four bad shares of seven (b) or six (s): no t=4 of them are intact, so no secret verifies.
    server, _, aggregate = drive(params, vectors, drop, on_unmask=corrupt_shares(kind, 3, {0, 1, 4, 5}))
    with pytest.raises(SecAggAbort, match=f"cannot rebuild {kind}_u"):
        aggregate()


def test_a_client_never_reveals_both_shares_of_a_peer():
    vectors, params = vectors_for(5), SecAggParams(threshold=3)
    server, clients, aggregate = drive(params, vectors, drop_after={1: "masked_input"})  # 1 has not unmasked
    asked = UnmaskRequest(0, (0, 1, 2, 3, 4))
    first = clients[0].unmask(asked)
    assert clients[0].unmask(asked) == first  # asking again the same thing is harmless
    assert {u for u, _ in first.b_shares} == {0, 1, 2, 3, 4} and first.s_shares == ()
    with pytest.raises(SecAggAbort, match=r"both .* clients \[2, 4\]"):
        clients[0].unmask(UnmaskRequest(0, (0, 1, 3)))  # would reveal s-shares of 2 and 4 too
    # And the other way round: a client first told that 2 dropped will not later reveal 2's b-share.
    assert [u for u, _ in clients[1].unmask(UnmaskRequest(1, (0, 1, 3, 4))).s_shares] == [2]
    with pytest.raises(SecAggAbort, match=r"clients \[2\]"):
        clients[1].unmask(UnmaskRequest(1, (0, 1, 2, 3, 4)))
    with pytest.raises(SecAggAbort, match="subset of U2"):
        clients[3].unmask(UnmaskRequest(3, (0, 1, 2)))  # not naming the client itself


def test_secagg_plus_sum_and_each_client_talks_only_to_its_k_neighbours():
    n, k = 16, 4
    params = SecAggParams(threshold=3, k=k, graph_seed=42)
    vectors = vectors_for(n)
    graph = neighbours(range(n), k, 42)
    assert graph != neighbours(range(n), k, 43)
    cohort = range(n)
    server = SecAggServer(params, cohort)
    clients = {u: SecAggClient(u, params, cohort) for u in cohort}
    requests = server.share_keys_requests([c.advertise_keys() for c in clients.values()])
    assert all({v for v, _, _ in r.neighbours} == set(graph[u]) for u, r in requests.items())
    replies = [clients[u].share_keys(r) for u, r in requests.items()]
    assert all({v for v, _ in m.ciphertexts} == set(graph[m.client_id]) for m in replies)
    requests = server.masked_input_requests([m for m in replies if m.client_id != 5])  # 5 drops
    assert all({v for v, _ in r.ciphertexts} == set(graph[u]) - {5} for u, r in requests.items())
    requests = server.unmask_requests([clients[u].masked_input(r, vectors[u]) for u, r in requests.items()])
    assert all(set(r.survivors) == (set(graph[u]) | {u}) - {5} for u, r in requests.items())
    replies = [clients[u].unmask(r) for u, r in requests.items()]
    for m in replies:
        assert {u for u, _ in m.b_shares} | {u for u, _ in m.s_shares} <= set(graph[m.client_id]) | {m.client_id}
    assert_secure_sum(server.aggregate(replies), vectors, params, survivors=set(range(n)) - {5})


def test_secagg_plus_leaves_out_clients_whose_neighbourhood_is_gone():
    n, k = 12, 2
    graph = neighbours(range(n), k, 7)
    u = 0
    vectors, params = vectors_for(n), SecAggParams(threshold=2, k=k, graph_seed=7)
    # Both neighbours of 0 never show up: 0's shares would have no holder but itself, so 0 is left out.
    total, survivors = simulate_round(vectors, params, {v: "start" for v in graph[u]})
    assert u not in survivors and len(survivors) == n - 3
    assert_secure_sum((total, survivors), vectors, params)


def test_parameter_validation():
    with pytest.raises(ValueError, match=r"\(k\+1\)/2 < t <= k\+1 = 10 \(complete graph"):
        SecAggServer(SecAggParams(threshold=5), range(10))  # t must exceed n/2
    with pytest.raises(ValueError, match="k\\+1 = 10"):
        SecAggClient(0, SecAggParams(threshold=11), range(10))  # t > n
    SecAggServer(SecAggParams(threshold=6), range(10))
    SecAggServer(SecAggParams(threshold=10), range(10))
    with pytest.raises(ValueError, match="k\\+1 = 5 \\(SecAgg\\+ with k=4\\)"):
        SecAggServer(SecAggParams(threshold=2, k=4), range(10))
    with pytest.raises(ValueError, match="k\\+1 = 5"):
        SecAggServer(SecAggParams(threshold=6, k=4), range(10))
    SecAggServer(SecAggParams(threshold=3, k=4), range(10))
    with pytest.raises(ValueError, match="k=10"):
        SecAggServer(SecAggParams(threshold=6, k=10), range(10))
    with pytest.raises(ValueError, match="not in the cohort"):
        SecAggClient(10, SecAggParams(threshold=6), range(10))


def test_overflow_bound_is_refused():
    params = SecAggParams(threshold=65, bits=16, frac_bits=8, clip=1.0)  # n · 256 < 2**15 iff n <= 127
    SecAggServer(params, range(127))
    for make in (lambda: SecAggServer(params, range(128)), lambda: SecAggClient(0, params, range(128))):
        with pytest.raises(ValueError, match=r"n · clip · 2\*\*frac_bits < 2\*\*\(bits−1\).*n <= 127"):
            make()
    with pytest.raises(ValueError, match="n <= 32767"):
        SecAggServer(SecAggParams(threshold=20001), range(40000))


def test_out_of_order_and_misaddressed_calls():
    params = SecAggParams(threshold=2)
    client, server = SecAggClient(0, params, range(3)), SecAggServer(params, range(3))
    with pytest.raises(RuntimeError):
        client.unmask(UnmaskRequest(0, (0,)))
    with pytest.raises(RuntimeError):
        server.aggregate([])
    adverts = [client.advertise_keys()] + [SecAggClient(u, params, range(3)).advertise_keys() for u in (1, 2)]
    with pytest.raises(RuntimeError):
        client.advertise_keys()
    requests = server.share_keys_requests(adverts)
    with pytest.raises(ValueError, match="addressed"):
        client.share_keys(requests[1])


def test_server_rejects_unexpected_messages_and_counts_them():
    params = SecAggParams(threshold=3)
    vectors = vectors_for(5)

    def extra(replies):  # a duplicate, a stranger, and one missing a recipient
        dup = replies[0]
        stranger = dataclasses.replace(replies[1], client_id=99)
        short = dataclasses.replace(replies[2], ciphertexts=replies[2].ciphertexts[1:])
        return [r for r in replies if r.client_id != 2] + [dup, stranger, short]

    server, _, aggregate = drive(params, vectors, on_share_keys=extra)
    assert_secure_sum(aggregate(), vectors, params, survivors=[0, 1, 3, 4])
    assert server.rejected == {"message": 3}


def test_server_holds_no_client_secret():
    vectors, params = vectors_for(5), SecAggParams(threshold=3)
    server, clients, aggregate = drive(params, vectors, drop_after={2: "share_keys"})
    aggregate()
    client_secrets = {s for c in clients.values() for s in (c._b, c._s_sk, c._c_sk, *c._channel.values())}
    held = []

    def walk(x):
        if isinstance(x, (bytes, bytearray)):
            held.append(bytes(x))
        elif isinstance(x, dict):
            for k, v in x.items():
                walk(k), walk(v)
        elif isinstance(x, (list, tuple, set, frozenset)):
            for v in x:
                walk(v)
        elif dataclasses.is_dataclass(x):
            walk(vars(x))

    walk(vars(server))
    assert held and not client_secrets & set(held)
