"""Secure aggregation with deployed clients: the protocol's rounds as round trips over an engine.

`RemoteSecureRound` is the server's side, with the interface of `simulation.SecureRound`; the devices are
real clients reached through `engine.exchange(round, stage, {client: request bytes}) -> {client: reply bytes}`
(the gRPC engine hands each client a protocol task and waits up to its deadline). `SecAggDevice` is a
client's side: one `SecAggClient` per round, fed the server's requests as bytes.

The stages, each one round trip (round 2 rides on the fit task, so training and masking are one trip):

    START        JSON {"params": SecAggParams fields, "cohort": ids}  -> AdvertiseKeys   (round 0)
    SHARE_KEYS   ShareKeysRequest                                     -> ShareKeys       (round 1)
    MASKED_INPUT MaskedInputRequest, with the fit task                -> MaskedInput     (round 2)
    UNMASK       UnmaskRequest                                        -> Unmask          (round 3)

A client silent at some stage has dropped out there: the protocol goes on without it (after round 2,
through the survivors' shares). Replies are trusted no more than any network input: one that does not
parse, or names another sender than the authenticated client that sent it, is rejected and counted.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections import Counter

import numpy as np

from .messages import (AdvertiseKeys, MaskedInput, MaskedInputRequest, ShareKeys, ShareKeysRequest, Unmask,
                       UnmaskRequest)
from .protocol import SecAggClient, SecAggParams, SecAggServer

log = logging.getLogger("fedstack.secagg")

START, SHARE_KEYS, MASKED_INPUT, UNMASK = "secagg.start", "secagg.share_keys", "secagg.masked_input", "secagg.unmask"


class RemoteSecureRound:
    """SecAgg between this server and the deployed clients of `cohort` in round `round`, through `engine`.

    Creating it runs rounds 0 and 1 (keys and shares) as two exchanges; `request_for(cid)` is what the
    fit task of a client in U2 carries; `collect` takes a client's MaskedInput from its fit reply; `finish`
    runs round 3 and returns (float64 sum of the collected vectors, the clients it sums). `bytes_up` and
    `bytes_down` count every protocol message; `rejected` counts refused messages by reason (the protocol
    server's reasons, and "undecodable" for bytes that do not parse). SecAggAbort when too few remain.
    """

    def __init__(self, params: SecAggParams, cohort, engine, round: int):
        cohort = sorted(int(u) for u in cohort)
        self.server = SecAggServer(params, cohort)
        self.engine, self.round = engine, round
        self.bytes_up = self.bytes_down = 0
        self._refused: Counter[str] = Counter()  # what never reached the protocol server
        start = json.dumps({"params": dataclasses.asdict(params), "cohort": cohort}).encode()
        adverts = self._exchange(START, dict.fromkeys(cohort, start), AdvertiseKeys)
        requests = self.server.share_keys_requests(adverts)
        shares = self._exchange(SHARE_KEYS, {u: r.to_bytes() for u, r in requests.items()}, ShareKeys)
        self._requests = {u: r.to_bytes() for u, r in self.server.masked_input_requests(shares).items()}
        self._masked: list[MaskedInput] = []

    @property
    def members(self) -> tuple[int, ...]:
        """U2: the clients that shared their keys, the only ones whose masked input can count."""
        return self.server.U2

    @property
    def rejected(self) -> Counter:
        """Refused protocol messages by reason."""
        return self._refused + self.server.rejected

    def request_for(self, client_id: int) -> tuple[str, bytes] | None:
        """(stage, message) for the client's fit task: its MaskedInputRequest; None if it is not in U2."""
        request = self._requests.get(client_id)
        if request is None:
            return None
        self.bytes_down += len(request)
        return MASKED_INPUT, request

    def collect(self, client_id: int, payload: bytes, length: int | None = None) -> bool:
        """Round 2 for one client: its MaskedInput bytes (of `length` values); False if refused."""
        self.bytes_up += len(payload)
        masked = self._read(client_id, payload, MaskedInput)
        if masked is None:
            return False
        if client_id not in self._requests or (length is not None and masked.y.shape != (length,)):
            self._refused["message"] += 1
            return False
        self._masked.append(masked)
        return True

    def finish(self) -> tuple[np.ndarray, tuple[int, ...]]:
        """Round 3: unmask; (the float64 sum of the collected vectors, the ids it sums)."""
        requests = self.server.unmask_requests(self._masked)
        replies = self._exchange(UNMASK, {u: r.to_bytes() for u, r in requests.items()}, Unmask)
        return self.server.aggregate(replies)

    def _exchange(self, stage: str, requests: dict[int, bytes], kind) -> list:
        self.bytes_down += sum(len(r) for r in requests.values())
        replies = self.engine.exchange(self.round, stage, requests)
        messages = []
        for client_id, data in sorted(replies.items()):
            self.bytes_up += len(data)
            message = self._read(client_id, data, kind)
            if message is not None:
                messages.append(message)
        return messages

    def _read(self, client_id: int, data: bytes, kind):
        try:
            message = kind.from_bytes(data)
        except ValueError as exc:
            self._refused["undecodable"] += 1
            log.warning("round %d: rejected a %s from client %d: %s", self.round, kind.__name__, client_id, exc)
            return None
        if message.client_id != client_id:  # the transport authenticated the sender; the message must agree
            self._refused["message"] += 1
            log.warning("round %d: client %d sent a %s in the name of client %d", self.round, client_id,
                        kind.__name__, message.client_id)
            return None
        return message


class SecAggDevice:
    """A deployed client's side of secure aggregation: answers the server's requests, one round at a time.

    `stage` is the run's `secagg` codec stage (codec.secagg.SecAgg): the parameters the server sends must
    be the ones the run's config gives, so a client never masks under weaker ones than it agreed to.
    It keeps the SecAggClient of the latest round only: a START forgets the one before.
    """

    def __init__(self, stage):
        self.stage = stage
        self.round: int | None = None
        self.client: SecAggClient | None = None

    def answer(self, round: int, client_id: int, stage: str, request: bytes) -> bytes:
        """The reply to a START, SHARE_KEYS or UNMASK request (bytes); ValueError if it cannot be answered."""
        if stage == START:
            self.round = self.client = None
            try:
                fields = json.loads(request)
                params, cohort = SecAggParams(**fields["params"]), [int(u) for u in fields["cohort"]]
            except (ValueError, TypeError, KeyError) as exc:
                raise ValueError(f"malformed secure aggregation parameters ({exc})") from None
            expected = self.stage.params(len(cohort), params.graph_seed)
            if params != expected:
                raise ValueError(f"the server's secure aggregation parameters {params} are not the run's {expected}")
            client = SecAggClient(client_id, params, cohort)
            reply = client.advertise_keys()
            self.round, self.client = round, client
            return reply.to_bytes()
        if stage == SHARE_KEYS:
            return self._client(round, client_id).share_keys(ShareKeysRequest.from_bytes(request)).to_bytes()
        if stage == UNMASK:
            return self._client(round, client_id).unmask(UnmaskRequest.from_bytes(request)).to_bytes()
        raise ValueError(f"unknown protocol stage {stage!r}")

    def mask(self, round: int, client_id: int, request: bytes, vector: np.ndarray) -> bytes:
        """Round 2: the MaskedInput bytes of `vector` under the server's MaskedInputRequest."""
        return self._client(round, client_id).masked_input(MaskedInputRequest.from_bytes(request), vector).to_bytes()

    def _client(self, round: int, client_id: int) -> SecAggClient:
        if self.client is None or self.round != round or self.client.id != client_id:
            raise ValueError(f"no secure aggregation open for round {round} (it starts with {START!r})")
        return self.client
