"""Secure aggregation as message passing: the SecAgg protocol of Bonawitz et al. 2017 ("Practical Secure
Aggregation for Privacy-Preserving Machine Learning", CCS'17), with the sparse SecAgg+ graph of Bell et al.
2020 ("Secure Single-Server Aggregation with (Poly)Logarithmic Overhead", CCS'20).

The server learns the sum of the survivors' vectors and who survived, nothing else about any one vector.
Each client u adds to its fixed-point vector a self mask PRG(b_u) and, for every neighbour v, a pairwise mask
±PRG(s_uv) that v adds with the opposite sign, so pairwise masks cancel in the sum. u Shamir-shares b_u and its
mask key s_u^SK among its neighbours; for a survivor the server rebuilds b_u, for a dropout s_u^SK (and from it
the pairwise masks that no longer cancel) — never both for one client, which honest clients enforce.

Threat model: the semi-honest ("honest-but-curious") variant — server and clients follow the protocol but may
drop out at any time. There are no signatures and no ConsistencyCheck round, so a server that lies about who
dropped out is out of scope; run the messages over authenticated channels (e.g. TLS), since the masked vectors
themselves carry no integrity check.

Rounds; each is client method → message → server method → messages for the next round:

    0 AdvertiseKeys  client.advertise_keys()         -> AdvertiseKeys  server.share_keys_requests(...)   (U1)
    1 ShareKeys      client.share_keys(request)      -> ShareKeys      server.masked_input_requests(...) (U2)
    2 MaskedInput    client.masked_input(request, x) -> MaskedInput    server.unmask_requests(...)       (U3)
    3 Unmasking      client.unmask(request)          -> Unmask         server.aggregate(...) -> (sum, U3)

Neighbours N(u): all other clients (k = n − 1, classic SecAgg) or the k of the SecAgg+ graph (`graph`). Keys,
shares and masks are only exchanged between neighbours. u shares t-of-(N(u) ∩ U1 ∪ {u}), like Bonawitz et al.
who include u itself: u keeps its own share and, as a survivor, reveals its own b-share in round 3. So the
k + 1 holders need k+1 ≥ t > (k+1)/2, i.e. n ≥ t > n/2 for the complete graph (`SecAggParams.check`).
A client too few of whose neighbours remain for its shares to be usable is left out of U1 / U2 by the server
(`_prune`); with fewer than t clients left, or fewer than t live holders of a needed secret, the round raises
SecAggAbort and outputs nothing.
"""

from __future__ import annotations

import hashlib
import secrets
import struct
from collections import Counter
from dataclasses import dataclass

import numpy as np

from .crypto import agree, decrypt, encrypt, generate_keypair, prg_mask, public_key
from .fixedpoint import FixedPoint
from .graph import graph
from .messages import (
    AdvertiseKeys,
    MaskedInput,
    MaskedInputRequest,
    ShareKeys,
    ShareKeysRequest,
    Unmask,
    UnmaskRequest,
    pack_share_plaintext,
    unpack_share_plaintext,
)
from .shamir import recover, split

CHANNEL_LABEL = b"fedstack secagg v1 channel"  # HKDF label of KA(c_u, c_v): encrypts u's shares for v
MASK_LABEL = b"fedstack secagg v1 mask"  # HKDF label of s_uv = KA(s_u, s_v): seeds the pairwise mask
STAGES = ("start", "advertise_keys", "share_keys", "masked_input")  # simulate_round: the last stage completed


class SecAggAbort(Exception):
    """The round cannot finish safely (too few survivors, or a secret that cannot be rebuilt); nothing is output."""


@dataclass(frozen=True)
class SecAggParams:
    """The public parameters of one secure aggregation, the same for the server and every client."""

    threshold: int  # t: shares needed to rebuild b_u or s_u^SK
    bits: int = 32  # sums are computed mod 2**bits
    clip: float = 1.0  # inputs are clipped to [−clip, clip]
    frac_bits: int = 16  # fixed-point resolution 2**−frac_bits
    k: int | None = None  # SecAgg+ neighbours per client; None: all others (classic SecAgg)
    graph_seed: int = 0  # public randomness, best fresh each round: fixes the graph, tags the share ciphertexts

    @property
    def fixed_point(self) -> FixedPoint:
        """The encoding of floats these parameters give."""
        return FixedPoint(self.bits, self.frac_bits, self.clip)

    def check(self, n: int) -> int:
        """The degree k for a cohort of n clients; ValueError naming the bound a parameter breaks."""
        k = n - 1 if self.k is None else self.k
        holders, t = k + 1, self.threshold
        if isinstance(t, bool) or not isinstance(t, int) or not (holders / 2 < t <= holders):
            graph_name = "complete graph, k + 1 = n" if self.k is None else f"SecAgg+ with k={k}"
            raise ValueError(
                f"threshold t={t!r} must satisfy (k+1)/2 < t <= k+1 = {holders} ({graph_name}): "
                f"each client's secrets are shared among its k neighbours and itself"
            )
        self.fixed_point.check_summands(n)
        return k


def _graph(params: SecAggParams, cohort) -> dict[int, tuple[int, ...]]:
    ids = tuple(sorted(cohort))
    return graph(ids, params.check(len(ids)), params.graph_seed)


def _share_ad(params: SecAggParams, u: int, v: int) -> bytes:
    # Binds e_uv to its sender, recipient and round, so the server cannot pass it off as another's.
    return b"fedstack secagg v1 shares" + struct.pack(">QII", params.graph_seed, u, v)


def _commit(b: bytes) -> bytes:
    return hashlib.sha256(b).digest()


class SecAggClient:
    """Client u: makes its keys and self-mask seed b_u, shares them, masks its vector, then helps unmask.

    `cohort` is the ids of every client invited to the round: public, the same for all parties and the server.
    """

    def __init__(self, client_id: int, params: SecAggParams, cohort):
        nbrs = _graph(params, cohort)
        if client_id not in nbrs:
            raise ValueError(f"client {client_id} is not in the cohort")
        self.id, self.params = client_id, params
        self.neighbours = frozenset(nbrs[client_id])  # N(u)
        self._round = 0
        self._revealed: dict[int, str] = {}  # peer -> "b" or "s": the only kind of its share u will ever reveal

    def advertise_keys(self) -> AdvertiseKeys:
        """Round 0: fresh key pairs c_u (channel) and s_u (masks) and a seed b_u; sends the public keys."""
        self._advance(0)
        self._c_sk, c_pk = generate_keypair()
        self._s_sk, s_pk = generate_keypair()
        self._b = secrets.token_bytes(32)
        return AdvertiseKeys(self.id, c_pk, s_pk)

    def share_keys(self, request: ShareKeysRequest) -> ShareKeys:
        """Round 1: shares of s_u^SK and b_u for each neighbour in U1, encrypted to it, and SHA-256(b_u)."""
        self._check_addressed(request, ShareKeysRequest)
        self._advance(1)
        self._keys = {v: (c_pk, s_pk) for v, c_pk, s_pk in request.neighbours}  # N(u) ∩ U1
        if not self._keys.keys() <= self.neighbours:
            raise SecAggAbort(f"client {self.id}: the server sent keys of non-neighbours")
        self._check_enough(len(self._keys) + 1, "U1")
        t, holders = self.params.threshold, sorted([*self._keys, self.id])
        s_shares, b_shares = split(self._s_sk, t, holders), split(self._b, t, holders)
        self._own_b_share = b_shares[self.id]  # a survivor's own s-share is never asked for
        self._channel = {v: agree(self._c_sk, c_pk, CHANNEL_LABEL) for v, (c_pk, _) in self._keys.items()}
        ciphertexts = tuple(
            (v, encrypt(self._channel[v], pack_share_plaintext(self.id, v, s_shares[v], b_shares[v]),
                        _share_ad(self.params, self.id, v)))
            for v in sorted(self._keys)
        )
        return ShareKeys(self.id, _commit(self._b), ciphertexts)

    def masked_input(self, request: MaskedInputRequest, x) -> MaskedInput:
        """Round 2: y_u = enc(x) + PRG(b_u) + Σ_{v∈N(u)∩U2, u<v} PRG(s_uv) − Σ_{v∈N(u)∩U2, u>v} PRG(s_uv)."""
        self._check_addressed(request, MaskedInputRequest)
        self._advance(2)
        self._inbox = dict(request.ciphertexts)  # its senders are N(u) ∩ U2
        if not self._inbox.keys() <= self._keys.keys():
            raise SecAggAbort(f"client {self.id}: the server forwarded shares from clients not in its U1")
        self._check_enough(len(self._inbox) + 1, "U2")
        bits = self.params.bits
        y = self.params.fixed_point.encode(x)
        y += prg_mask(self._b, y.size, bits)
        for v in sorted(self._inbox):
            mask = prg_mask(agree(self._s_sk, self._keys[v][1], MASK_LABEL), y.size, bits)
            if self.id < v:
                y += mask
            else:
                y -= mask
        if bits < 8 * y.itemsize:
            y &= y.dtype.type((1 << bits) - 1)  # the integer type wraps mod 2**32 or 2**64; reduce to 2**bits
        return MaskedInput(self.id, bits, y)

    def unmask(self, request: UnmaskRequest) -> Unmask:
        """Round 3: the b-share of each surviving neighbour (and its own), the s^SK-share of each dropped one.

        Never both kinds for one peer: asked again with a different U3 that would reveal the other kind,
        it raises SecAggAbort and reveals nothing.
        """
        self._check_addressed(request, UnmaskRequest)
        if self._round < 3:
            raise RuntimeError(f"client {self.id}: unmask called before masked_input")
        survivors = set(request.survivors)
        if self.id not in survivors or not survivors <= self._inbox.keys() | {self.id}:
            raise SecAggAbort(f"client {self.id}: U3 is not a subset of U2 containing this client")
        self._check_enough(len(survivors), "U3")
        asked = {v: "b" if v in survivors else "s" for v in [*self._inbox, self.id]}
        clash = sorted(v for v, kind in asked.items() if self._revealed.get(v, kind) != kind)
        if clash:
            raise SecAggAbort(
                f"client {self.id}: refusing to reveal both the b-share and the s^SK-share of clients {clash}"
            )
        self._revealed.update(asked)
        b_shares, s_shares, rejected = [(self.id, self._own_b_share)], [], []
        for v in sorted(self._inbox):
            try:
                plaintext = decrypt(self._channel[v], self._inbox[v], _share_ad(self.params, v, self.id))
            except ValueError:
                rejected.append((v, "aead"))
                continue
            try:
                sender, recipient, s_share, b_share = unpack_share_plaintext(plaintext)
                if (sender, recipient) != (v, self.id):
                    raise ValueError("share plaintext names other clients")
            except ValueError:
                rejected.append((v, "malformed"))
                continue
            if asked[v] == "b":
                b_shares.append((v, b_share))
            else:
                s_shares.append((v, s_share))
        return Unmask(self.id, tuple(sorted(b_shares)), tuple(s_shares), tuple(rejected))

    def _advance(self, expected: int) -> None:
        if self._round != expected:
            raise RuntimeError(f"client {self.id}: round {expected} called while at round {self._round}")
        self._round += 1

    def _check_addressed(self, request, kind) -> None:
        if not isinstance(request, kind) or request.client_id != self.id:
            raise ValueError(f"client {self.id}: expected a {kind.__name__} addressed to it, got {request!r:.80}")

    def _check_enough(self, n: int, stage: str) -> None:
        if n < self.params.threshold:
            raise SecAggAbort(
                f"client {self.id}: only {n} of its neighbours and itself in {stage}, need t={self.params.threshold}"
            )


class SecAggServer:
    """The server: routes public keys and share ciphertexts, then unmasks the sum of the survivors' vectors.

    It holds only what the messages give it. `rejected` counts what it refused, by reason: "message" (from a
    client not expected in that round, repeated, or not fitting it), "aead" and "malformed" (share ciphertexts
    a client reported as failing authentication or as malformed), "verification" (shares disagreeing with the
    rebuilt secret that matched s_u^PK or the commitment to b_u). U1, U2, U3 are the sorted survivor ids.
    """

    def __init__(self, params: SecAggParams, cohort):
        self.params = params
        self._nbrs = {u: frozenset(vs) for u, vs in _graph(params, cohort).items()}
        self.rejected: Counter[str] = Counter()
        self.U1 = self.U2 = self.U3 = ()
        self._round = 0

    def share_keys_requests(self, adverts) -> dict[int, ShareKeysRequest]:
        """After round 0: U1, and for each client in U1 the public keys of its neighbours in U1."""
        self._advance(0)
        got = self._accept(adverts, AdvertiseKeys, self._nbrs)
        u1 = self._prune(set(got), "U1")
        self._keys = {u: (got[u].c_pk, got[u].s_pk) for u in u1}  # u -> (c_u^PK, s_u^PK)
        self.U1 = tuple(sorted(u1))
        return {u: ShareKeysRequest(u, tuple((v, *self._keys[v]) for v in sorted(self._nbrs[u] & u1)))
                for u in self.U1}

    def masked_input_requests(self, replies) -> dict[int, MaskedInputRequest]:
        """After round 1: U2, and for each client in U2 the share ciphertexts its neighbours in U2 sent it."""
        self._advance(1)
        u1 = set(self.U1)
        got = {}
        for u, m in self._accept(replies, ShareKeys, u1).items():
            # A client must encrypt to exactly its neighbours in U1, else some of them could not unmask it.
            if {v for v, _ in m.ciphertexts} == self._nbrs[u] & u1:
                got[u] = m
            else:
                self.rejected["message"] += 1
        u2 = self._prune(set(got), "U2")
        self._commitments = {u: got[u].b_commitment for u in u2}
        self.U2 = tuple(sorted(u2))
        inbox = {v: [] for v in self.U2}
        for u in self.U2:
            for v, e in got[u].ciphertexts:
                if v in u2:
                    inbox[v].append((u, e))
        return {v: MaskedInputRequest(v, tuple(inbox[v])) for v in self.U2}

    def unmask_requests(self, inputs) -> dict[int, UnmaskRequest]:
        """After round 2: U3, and for each client in U3 which of its neighbours (and itself) are in U3."""
        self._advance(2)
        got = self._accept(inputs, MaskedInput, set(self.U2))
        self._sum_dtype = self.params.fixed_point.dtype
        sizes = Counter(m.y.size for m in got.values())
        self._length = max(sizes, key=lambda n: (sizes[n], -n)) if sizes else 0  # honest clients all agree
        u3 = set()
        for u, m in got.items():
            if m.bits == self.params.bits and m.y.dtype == self._sum_dtype and m.y.shape == (self._length,):
                u3.add(u)
            else:
                self.rejected["message"] += 1
        t = self.params.threshold
        if len(u3) < t:
            raise SecAggAbort(f"only {len(u3)} clients sent masked input (U3), need t={t}")
        for u in self.U2:
            # Rebuilding b_u (u survived) or s_u^SK (u dropped) needs t shares, and only clients in U3 answer.
            live = len(self._nbrs[u] & u3) + (u in u3)
            if live < t:
                raise SecAggAbort(f"only {live} holders of client {u}'s shares are in U3, need t={t}")
        self.U3 = tuple(sorted(u3))
        self._sum = np.zeros(self._length, dtype=self._sum_dtype)
        for u in self.U3:
            self._sum += got[u].y  # wraps mod 2**32 or 2**64, a multiple of 2**bits
        return {u: UnmaskRequest(u, tuple(sorted(self._nbrs[u] & u3 | {u}))) for u in self.U3}

    def aggregate(self, replies) -> tuple[np.ndarray, tuple[int, ...]]:
        """After round 3: (the float64 sum of the vectors of U3, U3). SecAggAbort if a secret cannot be rebuilt."""
        self._advance(3)
        t, u2, u3 = self.params.threshold, set(self.U2), set(self.U3)
        got = self._accept(replies, Unmask, u3)
        if len(got) < t:
            raise SecAggAbort(f"only {len(got)} clients answered the unmasking round, need t={t}")
        b_shares = {u: {} for u in u3}  # u -> {holder: share of b_u}
        s_shares = {u: {} for u in u2 - u3}  # u -> {holder: share of s_u^SK}
        for h, m in sorted(got.items()):
            for _, reason in m.rejected:
                self.rejected[reason] += 1
            for u, share in m.b_shares:  # h holds shares of its neighbours and of itself
                if u in b_shares and (u == h or u in self._nbrs[h]):
                    b_shares[u][h] = share
                else:
                    self.rejected["malformed"] += 1
            for u, share in m.s_shares:
                if u in s_shares and u in self._nbrs[h]:
                    s_shares[u][h] = share
                else:
                    self.rejected["malformed"] += 1
        # Each rebuilt secret is checked against what its owner published: SHA-256(b_u), or s_u^PK.
        b, s_sk = {}, {}
        for u, shares in sorted(b_shares.items()):
            commitment = self._commitments[u]
            b[u] = self._rebuild(u, shares, "b_u", lambda s: _commit(s) == commitment)
        for u, shares in sorted(s_shares.items()):
            s_pk = self._keys[u][1]
            s_sk[u] = self._rebuild(u, shares, "s_u^SK", lambda s: len(s) == 32 and public_key(s) == s_pk)
        bits, total = self.params.bits, self._sum
        for u in self.U3:
            total -= prg_mask(b[u], self._length, bits)
        for u, sk in s_sk.items():
            for v in sorted(self._nbrs[u] & u3):
                mask = prg_mask(agree(sk, self._keys[v][1], MASK_LABEL), self._length, bits)
                # y_v holds +PRG(s_uv) if v < u and −PRG(s_uv) if v > u, which u's share no longer cancels.
                if v < u:
                    total -= mask
                else:
                    total += mask
        return self.params.fixed_point.decode_sum(total), self.U3

    def _rebuild(self, u: int, shares: dict[int, int], what: str, is_valid) -> bytes:
        try:
            secret, bad = recover(shares, self.params.threshold, is_valid)
        except ValueError as e:
            raise SecAggAbort(f"cannot rebuild {what} of client {u}: {e}") from None
        if bad:
            self.rejected["verification"] += len(bad)
        return secret

    def _accept(self, messages, kind, expected) -> dict:
        out = {}
        for m in messages:
            if not isinstance(m, kind) or m.client_id not in expected or m.client_id in out:
                self.rejected["message"] += 1
            else:
                out[m.client_id] = m
        return out

    def _prune(self, alive: set, stage: str) -> set:
        # A client with fewer than t − 1 neighbours left could never have its shares used; leaving it out
        # can weaken its neighbours in turn, hence the loop. With the complete graph it is all or nothing.
        t, answered = self.params.threshold, len(alive)
        if answered < t:
            raise SecAggAbort(f"only {answered} clients in {stage}, need t={t}")
        while weak := {u for u in alive if len(self._nbrs[u] & alive) + 1 < t}:
            alive -= weak
        if len(alive) < t:
            raise SecAggAbort(f"{stage}: only {len(alive)} of {answered} clients keep t−1 = {t - 1} neighbours")
        return alive

    def _advance(self, expected: int) -> None:
        if self._round != expected:
            raise RuntimeError(f"server: the step after round {expected} called while after round {self._round - 1}")
        self._round += 1


def simulate_round(vectors: dict, params: SecAggParams, drop_after: dict | None = None, *, through_bytes=True):
    """Runs all four rounds in-process: (float64 sum of the survivors' vectors, survivors U3).

    `drop_after` maps a client id to the last stage it completes (STAGES): "start" (it sends nothing),
    "advertise_keys", "share_keys" or "masked_input"; it sends nothing afterwards. Every message goes
    through to_bytes / from_bytes unless `through_bytes` is False. SecAggAbort if the round cannot finish.
    """
    drop_after = dict(drop_after or {})
    if unknown := set(drop_after.values()) - set(STAGES):
        raise ValueError(f"unknown stages {sorted(unknown)} in drop_after; known: {STAGES}")
    if strangers := set(drop_after) - set(vectors):
        raise ValueError(f"drop_after names clients without a vector: {sorted(strangers)}")
    last = {u: STAGES.index(drop_after[u]) if u in drop_after else len(STAGES) for u in vectors}
    wire = (lambda m: type(m).from_bytes(m.to_bytes())) if through_bytes else (lambda m: m)
    cohort = sorted(vectors)
    server = SecAggServer(params, cohort)
    clients = {u: SecAggClient(u, params, cohort) for u in cohort}
    requests = server.share_keys_requests([wire(clients[u].advertise_keys()) for u in cohort if last[u] > 0])
    requests = server.masked_input_requests(
        [wire(clients[u].share_keys(wire(r))) for u, r in requests.items() if last[u] > 1])
    requests = server.unmask_requests(
        [wire(clients[u].masked_input(wire(r), vectors[u])) for u, r in requests.items() if last[u] > 2])
    return server.aggregate([wire(clients[u].unmask(wire(r))) for u, r in requests.items() if last[u] > 3])
