"""Secure aggregation deployed: each protocol step a round trip to real clients, the server seeing only the sum.

The first tests drive the pieces in-process (the server's RemoteSecureRound against devices behind a fake
engine; the gRPC engine's exchange through its service); the last two start a real server and clients on
loopback, over TLS with tokens.
"""

import dataclasses
import json
import threading
import time

import numpy as np
import pytest

from deployment import start_client, start_server
from fedstack.client import FitResult
from fedstack.codec import build_pipeline
from fedstack.codec.secagg import SecAgg
from fedstack.plan import load_config
from fedstack.experiment import run_config
from fedstack.secagg import MaskedInput, SecAggAbort
from fedstack.secagg.remote import MASKED_INPUT, START, SecAggDevice
from fedstack.secagg.simulation import SecureRound
from fedstack.store import RunStore
from fedstack.transport import fedstack_pb2 as pb
from fedstack.transport.client import Client, TlsSettings
from fedstack.transport.security import make_credentials
from fedstack.transport.server import FederationService, GrpcEngine
from fedstack.engine import Engine


class Devices(Engine):
    """An engine whose `exchange` asks in-process devices; `garble` = {(client, stage)} answered with junk."""

    exchanges = True

    def __init__(self, stage, cohort, garble=()):
        self.devices = {u: SecAggDevice(stage) for u in cohort}
        self.garble = set(garble)

    def exchange(self, round, stage, requests):
        return {u: b"junk" if (u, stage) in self.garble else self.devices[u].answer(round, u, stage, request)
                for u, request in requests.items()}


def test_a_remote_round_sums_what_the_simulated_one_does_and_counts_bad_messages():
    stage, cohort = SecAgg(threshold=0.6, value_range=2.0), [0, 1, 2, 3, 4]
    vectors = {u: np.random.default_rng(u).uniform(-1, 1, 50).astype(np.float32) for u in cohort}
    engine = Devices(stage, cohort, garble={(1, "secagg.unmask")})
    remote = stage.open_round(cohort, 7, engine=engine, round=3)
    assert remote.members == (0, 1, 2, 3, 4)
    for u in cohort:
        kind, request = remote.request_for(u)
        assert kind == MASKED_INPUT
        if u != 2:  # client 2 fails in training: it never sends masked input
            assert remote.collect(u, engine.devices[u].mask(3, u, request, vectors[u]), 50)
    assert not remote.collect(4, b"not a masked input", 50)  # undecodable: refused and counted, not fatal
    assert not remote.collect(3, MaskedInput(3, 32, np.zeros(10, np.uint32)).to_bytes(), 50)  # wrong length
    total, members = remote.finish()
    assert members == (0, 1, 3, 4) and remote.rejected == {"undecodable": 2, "message": 1}
    simulated = SecureRound(stage.params(5, 7), cohort)
    for u in members:
        simulated.submit(u, vectors[u])
    assert np.array_equal(total, simulated.finish()[0])  # the masks cancel exactly: the same fixed-point sum
    assert remote.bytes_up > 0 and remote.bytes_down > 0


def test_a_device_refuses_parameters_other_than_the_runs_and_steps_out_of_order():
    stage = SecAgg(threshold=0.8)  # t = 4 of 5
    device = SecAggDevice(stage)
    weaker = {**dataclasses.asdict(stage.params(5, 1)), "threshold": 3}
    with pytest.raises(ValueError, match="not the run's"):
        device.answer(1, 0, START, json.dumps({"params": weaker, "cohort": [0, 1, 2, 3, 4]}).encode())
    with pytest.raises(ValueError, match="no secure aggregation open"):
        device.answer(1, 0, "secagg.share_keys", b"")
    with pytest.raises(ValueError, match="malformed"):
        device.answer(1, 0, START, b"{")
    # too few clients answer the key exchange: the round aborts before anyone trains
    engine = Devices(stage, [0, 1, 2])
    engine.exchange = lambda round, step, requests: {}
    with pytest.raises(SecAggAbort):
        stage.open_round([0, 1, 2], 1, engine=engine, round=1)


class Context:
    """The little of a gRPC servicer context the service uses."""

    def __init__(self, token):
        self.token = token

    def invocation_metadata(self):
        return [("authorization", f"Bearer {self.token}")]

    def auth_context(self):
        return {}

    def abort(self, code, details):
        raise RuntimeError(details)


class Registry:
    def identify(self, token):
        return token


def test_the_engine_exchanges_protocol_messages_through_its_service():
    engine = GrpcEngine(["a", "b", "c"], deadline_s=3.0, poll_s=0.2)
    service = FederationService(engine, Registry(), "", (1,), 2)
    for name in ("a", "b", "c"):
        engine.heartbeat(name)
    replies = {}
    exchange = threading.Thread(target=lambda: replies.update(engine.exchange(4, "secagg.start", {0: b"x", 1: b"y"})))
    exchange.start()

    def poll(name):
        while True:
            chunks = list(service.Poll(pb.PollRequest(), Context(name)))
            if chunks[0].header.kind != pb.TaskHeader.WAIT:
                return chunks

    def submit(name, header, payload):
        header.payload_bytes = len(payload)
        return service.Submit(iter([pb.UpdateChunk(header=header), pb.UpdateChunk(payload=payload)]), Context(name))

    (task,) = poll("a")
    h = task.header
    assert (h.kind, h.round, h.protocol_stage, h.protocol_request, h.client_id) == \
        (pb.TaskHeader.PROTOCOL, 4, "secagg.start", b"x", 0)
    assert not submit("a", pb.UpdateHeader(task_id=h.task_id, round=3), b"late").accepted  # wrong round
    assert not submit("b", pb.UpdateHeader(task_id=h.task_id, round=4), b"foreign").accepted
    # a protocol reply is no model update: it is not decoded, yet every other check holds
    assert submit("a", pb.UpdateHeader(task_id=h.task_id, round=4), b"keys of a").accepted
    assert not submit("a", pb.UpdateHeader(task_id=h.task_id, round=4), b"again").accepted  # replayed
    started = time.monotonic()
    exchange.join(timeout=30)  # "b" never answers: dropped at the deadline
    assert replies == {0: b"keys of a"} and time.monotonic() - started < 10
    assert engine.refused == {"stale": 2, "foreign": 1}


class Trainer:
    def fit(self, params, data, config, state=None):
        return FitResult(np.full_like(params, 0.25), 10)


class Stub:
    """Hands the client one task and keeps what it submits."""

    def __init__(self, header):
        self.header, self.submitted = header, []

    def Poll(self, request, **kw):
        return iter([pb.TaskChunk(header=self.header), pb.TaskChunk(params=np.zeros(3, np.float32).tobytes())])

    def Submit(self, messages, **kw):
        self.submitted.append(list(messages))
        return pb.SubmitReply(accepted=True)


def test_a_device_of_a_secure_run_never_sends_its_update_in_the_clear():
    client = Client("127.0.0.1:1", "token", tls=TlsSettings(insecure=True), trainer=Trainer())
    client.config = load_config(None, OVERRIDES)
    client.pipeline, client.heartbeat_s = build_pipeline(["clip"]), 60.0
    client.summing = SecAgg()
    client.secagg = SecAggDevice(client.summing)
    client.stub = Stub(pb.TaskHeader(kind=pb.TaskHeader.FIT, task_id=1, round=1, fit_config_json="{}",
                                     params_bytes=12))  # a plain fit task: no masked-input request
    assert client.poll_once()
    (header, *payload), = client.stub.submitted
    assert "refusing to send an unmasked update" in header.header.error and not payload


# --- a real deployment on loopback ---

OVERRIDES = ["data.name=digits", "model.name=logreg", "client.lr=0.1", "privacy.clip_norm=2.0",
             'codec.pipeline=["clip", "secagg"]', "eval.federated=false"]


def _finish(server, clients):
    try:
        _, err = server.communicate(timeout=240)
        assert server.returncode == 0, err
        for c in clients:
            assert c.wait(timeout=60) == 0, c.stderr.read() if c.stderr else ""
    finally:
        for p in [server, *clients]:
            p.kill()
    return err


def _rounds(tmp_path):
    return [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]


def test_a_deployed_secure_run_ends_with_the_simulations_bits(tmp_path):
    # three devices, each a process that imports PyTorch: t = 2 of 3
    overrides = [*OVERRIDES, "data.num_clients=3", "server.clients_per_round=3", "server.min_clients=3",
                 "server.rounds=3"]
    creds = make_credentials(tmp_path / "certs", 3)
    server, port = start_server(tmp_path, creds, overrides, "--share-seed")
    clients = [start_client(port, creds, i, "--partition", str(i - 1)) for i in range(1, 4)]
    _finish(server, clients)
    rounds = _rounds(tmp_path)
    assert [r["clients"] for r in rounds] == [3, 3, 3] and all(r["secagg_rejected"] == 0 for r in rounds)
    store = RunStore(tmp_path / "run" / "store.sqlite")
    last, deployed = store.checkpoint()
    store.close()
    simulated = run_config(load_config(None, [*overrides, "engine.name=local"]), tmp_path / "sim")
    # The devices mask the very vectors the simulated ones do, and the masks cancel exactly mod 2**bits:
    # the same fixed-point sum, so the same bits (no tolerance needed).
    assert last == 3 and np.array_equal(deployed, simulated.params)
    # the same protocol messages crossed the wire as in simulation; down, also each round's parameters
    assert [r["bytes_up"] for r in rounds] == [r["bytes_up"] for r in simulated.rounds]
    assert all(d["bytes_down"] > s["bytes_down"] for d, s in zip(rounds, simulated.rounds))
