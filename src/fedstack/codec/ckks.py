"""The `ckks` stage of a codec pipeline: homomorphic aggregation, so the server adds what it cannot read.

Like `secagg` it is not a transform a worker applies but a protocol the round loop runs
(`server.py`): each client encrypts its update under the key holder's public CKKS key
(fedstack.he), the server adds the ciphertexts, and only the key holder — never the server —
decrypts, and only the aggregate. The key holder's keys come from `fedstack keys DIR`
(`codec.ckks_keys = "DIR"`: ckks_public.bin for clients and server, ckks_secret.bin for the key
holder alone); without it a simulation makes a fresh key holder for the run. In simulation the key
holder is its own object beside the server, which is only ever given the public context.
It must be the last stage of the pipeline, after "clip" (CKKS keeps ~1e-8 absolute precision on
values of moderate size; clipping bounds them).

Deployed (an engine that can `exchange` protocol messages, transport.server.GrpcEngine), the server
reads ckks_public.bin only; the key holder is a client started with `--ckks-secret FILE` (it also
trains when sampled); devices answer through `CKKSDevice`, and `RemoteEncryptedRound` runs each round
with them, one stage a round trip:

    PUBLIC_KEY  the public context  -> JSON {"key_id", "key_holder"}   (once per client and session)
    ENCRYPT     the key id, with the fit task -> the encrypted update  (in place of the update)
    DECRYPT     the members' ids and their aggregate, to the key holder -> its float64 values
                (at the end of the round; framing: see `decrypt_request`)

A round opens only with a key holder connected, and aborts (nothing aggregated) if it does not
decrypt. The key holder decrypts an aggregate only if the server says it sums at least `min_members`
distinct clients (`fedstack client --min-members`, default 2, raised to the run's server.min_clients),
and only once per round: a server cannot have it decrypt one update alone, nor two sums of the same
round whose difference is one update. It cannot check the member list (CKKS sums carry no count,
and the server holds the public key, so it can encrypt anything), so this protects updates from an
honest-but-curious server; against an active server it only bounds what one round's decryption
reveals. A device pinned to a key pair (`--ckks-public`, or the key holder's own `--ckks-secret`)
refuses any other public key with KeyPinError, and then stops.
"""

from __future__ import annotations

import json
import logging
import struct
from collections import Counter
from pathlib import Path

import numpy as np

from .. import he
from .base import Codec

log = logging.getLogger("fedstack.ckks")

PUBLIC_KEY, ENCRYPT, DECRYPT = "ckks.public_key", "ckks.encrypt", "ckks.decrypt"
_COUNT = struct.Struct("<I")


class KeyPinError(ValueError):
    """The server's public key is not the key pair this device is pinned to (--ckks-public, --ckks-secret)."""


def decrypt_request(members, aggregate: bytes) -> bytes:
    """A DECRYPT request: the member count (uint32, little-endian), the members' client ids (uint32 each),
    then the aggregate's CKKS payload."""
    ids = [int(m) for m in members]
    if not all(0 <= m < 2**32 for m in ids):
        raise ValueError(f"member ids must fit in 32 bits, got {ids}")
    return _COUNT.pack(len(ids)) + np.asarray(ids, dtype="<u4").tobytes() + bytes(aggregate)


def read_decrypt_request(request: bytes) -> tuple[tuple[int, ...], bytes]:
    """(the member ids, the aggregate) of a DECRYPT request; ValueError if its framing is wrong."""
    request = bytes(request)
    if len(request) < _COUNT.size:
        raise ValueError(f"decrypt request: {len(request)} bytes, too short for its member count")
    (count,) = _COUNT.unpack_from(request)
    end = _COUNT.size + 4 * count
    if len(request) < end:
        raise ValueError(f"decrypt request: {count} members announced, {len(request)} bytes in all")
    members = tuple(int(m) for m in np.frombuffer(request[_COUNT.size:end], dtype="<u4"))
    return members, request[end:]


class CKKS(Codec):
    """Marks homomorphic aggregation at the end of a pipeline and opens each round's encrypted sum."""

    name, linear, unbiased = "ckks", True, True
    needs_linear_input = True
    sums = True

    def __init__(self, keys: str = ""):
        self.keys = keys
        self._holder = None  # made or read when the first round opens: key generation takes a moment
        self._roster: Roster | None = None  # deployed: what the server knows of the devices, all run long

    def key_holder(self) -> he.KeyHolder:
        """The party that can decrypt the aggregate: read from `keys`, or made fresh for this run."""
        if self._holder is None:
            if self.keys:
                self._holder = he.read_secret(Path(self.keys) / "ckks_secret.bin")
            else:
                self._holder = he.KeyHolder()
        return self._holder

    def open_round(self, cohort, seed: int, engine=None, round: int = 0):
        """One round's encrypted sum (the cohort needs no setup: clients encrypt under a fixed public key):
        with a simulated key holder (EncryptedRound), or with the deployed clients of an `engine` that
        offers `exchange` (RemoteEncryptedRound; ValueError if no key holder is connected)."""
        if engine is not None and engine.exchanges:
            if self._roster is None:
                if not self.keys:  # a server that made the keys would hold the secret one
                    raise ValueError("deployed homomorphic aggregation needs codec.ckks_keys (`fedstack keys DIR`)")
                self._roster = Roster(he.read_public(Path(self.keys) / he.PUBLIC_FILE))
            return RemoteEncryptedRound(self._roster, cohort, engine, round)
        holder = self.key_holder()
        return EncryptedRound(holder.public_context(), holder)

    def encode(self, value, ctx):
        raise NotImplementedError("ckks runs as a protocol in the round loop, not inside a worker")

    def decode(self, value, ctx):
        raise NotImplementedError("ckks runs as a protocol in the round loop, not inside a worker")


class EncryptedRound:
    """Clients encrypt (`submit`), the server adds ciphertexts as they come, the key holder decrypts the sum."""

    def __init__(self, public_context: bytes, key_holder: he.KeyHolder):
        self.public_context = public_context
        self._key_holder = key_holder  # the server side below never touches it until `finish`
        self._sum: bytes | None = None
        self.members: list[int] = []
        self.bytes_up = self.bytes_down = 0

    def submit(self, client_id: int, vector: np.ndarray) -> bool:
        """The client's device encrypts its vector; the server adds it to the running encrypted sum."""
        payload = he.encrypt(self.public_context, vector)
        self.bytes_up += len(payload)
        self._sum = payload if self._sum is None else he.add(self.public_context, [self._sum, payload])
        self.members.append(client_id)
        return True

    def finish(self) -> tuple[np.ndarray, tuple[int, ...]]:
        """The key holder decrypts the aggregate: (float64 sum, the clients it sums)."""
        if self._sum is None:
            raise ValueError("nothing was submitted")
        self.bytes_down += len(self._sum)  # the aggregate travels to the key holder
        return self._key_holder.decrypt(self._sum, dtype=np.float64), tuple(self.members)


class Roster:
    """What a deployed server knows of the devices across rounds: which ones have the public context
    (in which session: a client that joins again may have lost it) and which hold the secret key."""

    def __init__(self, public_context: bytes):
        self.public_context = public_context
        self.key_id = he.key_id(public_context)
        self.sessions: dict[int, int] = {}  # client id -> the session it received the public context in
        self.holders: set[int] = set()


class RemoteEncryptedRound:
    """Round `round`'s encrypted sum with the deployed clients of `engine`, through protocol exchanges.

    Creating it sends the public context to the connected and cohort clients that lack it (finding the
    key holder among them); `request_for(cid)` is what a fit task carries; `collect` adds a client's
    ciphertext to the sum; `finish` has the key holder decrypt the sum and returns (float64 sum, the
    clients it sums). `rejected` counts refused ciphertexts by reason. The engine offers `exchange`,
    `connected()` and `session(cid)` (how many times the client has joined).
    """

    def __init__(self, roster: Roster, cohort, engine, round: int):
        self.roster, self.engine, self.round = roster, engine, round
        self.bytes_up = self.bytes_down = 0
        self.rejected: Counter[str] = Counter()
        self.members: list[int] = []
        self._sum: bytes | None = None
        self._length: int | None = None
        connected = set(engine.connected())
        self._introduce(sorted(connected | {int(c) for c in cohort}))
        holders = sorted(roster.holders & connected)
        if not holders:
            raise ValueError("no client holding the CKKS secret key is connected (start one with --ckks-secret)")
        self.holder = holders[0]

    def _introduce(self, clients: list[int]) -> None:
        """Send the public context to the clients that lack it, and note which of them hold the secret key."""
        sessions = {c: self.engine.session(c) for c in clients}
        new = [c for c in clients if self.roster.sessions.get(c) != sessions[c]]
        if not new:
            return
        for c in new:  # until it answers, a client has no (current) public context
            self.roster.sessions.pop(c, None)
            self.roster.holders.discard(c)
        self.bytes_down += len(self.roster.public_context) * len(new)
        replies = self.engine.exchange(self.round, PUBLIC_KEY, dict.fromkeys(new, self.roster.public_context))
        for c, reply in sorted(replies.items()):
            self.bytes_up += len(reply)
            try:
                answer = json.loads(reply)
                if answer["key_id"] != self.roster.key_id.hex():
                    raise ValueError(f"it names key id {answer['key_id']}")
            except (ValueError, TypeError, KeyError) as exc:
                self.rejected["public_key"] += 1
                log.warning("round %d: client %d did not take the public context: %s", self.round, c, exc)
                continue
            self.roster.sessions[c] = sessions[c]
            if answer.get("key_holder") is True:
                self.roster.holders.add(c)

    def request_for(self, client_id: int) -> tuple[str, bytes] | None:
        """(stage, message) for the client's fit task: encrypt under this key id; None if it lacks the context."""
        if client_id not in self.roster.sessions:
            return None
        self.bytes_down += len(self.roster.key_id)
        return ENCRYPT, self.roster.key_id

    def collect(self, client_id: int, payload: bytes, length: int) -> bool:
        """Add a client's ciphertext (of `length` values) to the sum, unread; False if it is malformed."""
        self.bytes_up += len(payload)
        try:
            payloads = [bytes(payload)] if self._sum is None else [self._sum, bytes(payload)]
            self._sum = he.add(self.roster.public_context, payloads, length=length)
        except ValueError as exc:  # the running sum stays as it was: one bad client spoils nothing
            self.rejected["malformed"] += 1
            log.warning("round %d: rejected the ciphertext of client %d: %s", self.round, client_id, exc)
            return False
        self._length = length
        self.members.append(client_id)
        return True

    def finish(self) -> tuple[np.ndarray, tuple[int, ...]]:
        """The key holder decrypts the aggregate: (float64 sum, the clients it sums); ValueError if it does not."""
        if self._sum is None:
            raise ValueError("nothing was collected")
        request = decrypt_request(self.members, self._sum)  # the key holder decrypts only enough members' sum
        self.bytes_down += len(request)
        reply = self.engine.exchange(self.round, DECRYPT, {self.holder: request}).get(self.holder)
        if reply is None:
            raise ValueError(f"the key holder (client {self.holder}) did not decrypt the aggregate")
        self.bytes_up += len(reply)
        if len(reply) != 8 * self._length:
            raise ValueError(f"the key holder sent {len(reply)} bytes for {self._length} float64 values")
        total = np.frombuffer(reply, dtype="<f8").astype(np.float64)
        if not np.isfinite(total).all():
            raise ValueError("the key holder's sum has non-finite values")
        return total, tuple(self.members)


class CKKSDevice:
    """A deployed client's side of homomorphic aggregation: keeps the public contexts the server sends
    (by key id), encrypts its update under one, and — given the secret key (`fedstack client
    --ckks-secret`) — decrypts the aggregate.

    `key_id` pins the key pair (`--ckks-public`): any other public context is refused with KeyPinError,
    as one that does not match the key holder's own secret key is. The key holder decrypts only an
    aggregate whose DECRYPT request names at least `min_members` distinct clients, and at most one per
    round (`decrypted`: the rounds it decrypted); a refused request decrypts nothing and counts for nothing.
    """

    def __init__(self, key_holder: he.KeyHolder | None = None, *, key_id: bytes | None = None,
                 min_members: int = 2):
        if not min_members >= 1:
            raise ValueError(f"min_members must be at least 1, got {min_members}")
        self.key_holder, self.key_id, self.min_members = key_holder, key_id, min_members
        self.contexts: dict[bytes, bytes] = {}
        self.decrypted: set[int] = set()

    def answer(self, round: int, client_id: int, stage: str, request: bytes) -> bytes:
        """The reply to a PUBLIC_KEY or DECRYPT request (bytes); ValueError (KeyPinError for a public key
        of another key pair) if it cannot be answered."""
        if stage == PUBLIC_KEY:
            context = bytes(request)
            key_id = he.key_id(context)
            holder = self.key_holder
            if holder is not None and holder.key_id != key_id:
                raise KeyPinError(f"--ckks-secret holds key pair {holder.key_id.hex()}, the server's public key "
                                  f"is {key_id.hex()}: refusing it")
            if self.key_id is not None and self.key_id != key_id:
                raise KeyPinError(f"--ckks-public pins key pair {self.key_id.hex()}, the server's public key is "
                                  f"{key_id.hex()}: refusing it")
            self.contexts[key_id] = context
            return json.dumps({"key_id": key_id.hex(), "key_holder": holder is not None}).encode()
        if stage == DECRYPT:
            if self.key_holder is None:
                raise ValueError("asked to decrypt, but this client holds no secret key (--ckks-secret)")
            members, aggregate = read_decrypt_request(request)
            if len(set(members)) != len(members):
                raise ValueError(f"round {round}: asked to decrypt a sum whose members repeat ({list(members)})")
            if len(members) < self.min_members:
                raise ValueError(f"round {round}: asked to decrypt the sum of {len(members)} client(s); this key "
                                 f"holder decrypts only sums of at least {self.min_members} (--min-members, "
                                 "server.min_clients)")
            if round in self.decrypted:
                raise ValueError(f"round {round}: asked to decrypt a second aggregate; this key holder decrypts "
                                 "one per round")
            total = self.key_holder.decrypt(aggregate, dtype=np.float64).astype("<f8").tobytes()
            self.decrypted.add(round)
            return total
        raise ValueError(f"unknown protocol stage {stage!r}")

    def encrypt(self, request: bytes, vector: np.ndarray) -> bytes:
        """The vector encrypted under the public context whose key id the server's ENCRYPT request names."""
        context = self.contexts.get(bytes(request))
        if context is None:
            raise ValueError(f"no public context for key id {bytes(request).hex()} (the server sends it first)")
        return he.encrypt(context, vector)
