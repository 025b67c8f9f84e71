"""Homomorphic aggregation deployed: devices encrypt, the server adds ciphertexts, one client decrypts the sum.

The first tests drive the pieces in-process (the server's RemoteEncryptedRound against devices behind a fake
engine; a client's answers through a stub); the last two start a real server and clients on loopback, over
TLS with tokens.
"""

import json
import shutil

import numpy as np
import pytest

from deployment import start_client, start_server
from fedstack import he
from fedstack.client import FitResult
from fedstack.codec.ckks import CKKS, DECRYPT, ENCRYPT, PUBLIC_KEY, CKKSDevice, KeyPinError, decrypt_request
from fedstack.config import to_toml
from fedstack.plan import load_config
from fedstack.errors import ConfigError, FedstackError
from fedstack.experiment import run_config
from fedstack.store import RunStore
from fedstack.transport import fedstack_pb2 as pb
from fedstack.transport.client import Client, TlsSettings
from fedstack.transport.security import make_credentials
from fedstack.transport.server import GrpcEngine
from fedstack.engine import Engine

pytest.importorskip("tenseal")


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    directory = tmp_path_factory.mktemp("keys")
    he.write_keys(directory)
    return directory


@pytest.fixture(scope="module")
def other_public():
    """The public context of another key pair."""
    return he.KeyHolder().public_context()


class Devices(Engine):
    """An engine whose `exchange` asks in-process devices; a device that raises, or is `silent`, does not answer."""

    exchanges = True

    def __init__(self, devices, silent=()):
        self.devices, self.silent = devices, set(silent)
        self.sessions = dict.fromkeys(devices, 1)
        self.asked = []  # (stage, clients) of each exchange

    def connected(self):
        return sorted(self.devices)

    def session(self, client_id):
        return self.sessions[client_id]

    def exchange(self, round, stage, requests):
        self.asked.append((stage, sorted(requests)))
        replies = {}
        for u, request in requests.items():
            try:
                if u not in self.silent:
                    replies[u] = self.devices[u].answer(round, u, stage, request)
            except ValueError:
                pass
        return replies


def test_a_remote_round_adds_ciphertexts_and_only_the_key_holder_decrypts(keys, other_public, monkeypatch):
    holder = he.read_secret(keys / he.SECRET_FILE)
    engine = Devices({0: CKKSDevice(), 1: CKKSDevice(holder), 2: CKKSDevice(), 3: CKKSDevice()})

    def no_secret(*args, **kwargs):
        raise AssertionError("the deployed server touched a secret key")

    for owner, name in ((he, "read_secret"), (he.KeyHolder, "load"), (he.KeyHolder, "__init__")):
        monkeypatch.setattr(owner, name, no_secret)
    stage = CKKS(str(keys))
    vectors = {u: np.random.default_rng(u).uniform(-1, 1, 5000) for u in range(4)}  # two ciphertexts each
    remote = stage.open_round([0, 2, 3], 7, engine=engine, round=1)  # the key holder, 1, is connected, not sampled
    assert remote.holder == 1 and engine.asked == [(PUBLIC_KEY, [0, 1, 2, 3])]
    for u in (0, 2, 3):
        kind, request = remote.request_for(u)
        assert kind == ENCRYPT and request == he.key_id(he.read_public(keys / he.PUBLIC_FILE))
        assert remote.collect(u, engine.devices[u].encrypt(request, vectors[u]), 5000)
    # malformed or misshapen ciphertexts are refused and counted; the sum goes on without them
    assert not remote.collect(2, b"junk", 5000)
    assert not remote.collect(3, engine.devices[3].encrypt(request, vectors[3][:4999]), 5000)
    assert not remote.collect(0, he.encrypt(other_public, vectors[0]), 5000)
    total, members = remote.finish()
    assert members == (0, 2, 3) and remote.rejected == {"malformed": 3}
    assert engine.asked[-1] == (DECRYPT, [1])
    np.testing.assert_allclose(total, vectors[0] + vectors[2] + vectors[3], atol=1e-6)
    # the public context goes to each client once; again only to one that joined again (a new process)
    engine.sessions[2] += 1
    engine.asked.clear()
    stage.open_round([0, 2, 3], 8, engine=engine, round=2)
    assert engine.asked == [(PUBLIC_KEY, [2])]


def test_no_round_opens_without_a_key_holder_and_none_ends_without_its_decryption(keys):
    public = he.read_public(keys / he.PUBLIC_FILE)
    wrong = CKKSDevice(he.KeyHolder())  # given the secret key of another pair: it refuses the server's public key
    engine = Devices({0: CKKSDevice(), 1: wrong})
    with pytest.raises(ValueError, match="no client holding the CKKS secret key"):
        CKKS(str(keys)).open_round([0, 1], 1, engine=engine, round=1)
    assert wrong.contexts == {}
    holder = CKKSDevice(he.read_secret(keys / he.SECRET_FILE))
    for silent, reply, match in ((True, None, "did not decrypt"), (False, b"\0" * 8, "8 bytes for 10 float64")):
        engine = Devices({0: CKKSDevice(), 1: holder})
        remote = CKKS(str(keys)).open_round([0], 1, engine=engine, round=1)
        assert remote.collect(0, engine.devices[0].encrypt(he.key_id(public), np.ones(10)), 10)
        engine.silent = {1} if silent else set()
        if reply is not None:
            engine.exchange = lambda round, stage, requests: {1: reply}
        with pytest.raises(ValueError, match=match):  # the server's _unmask aborts the round: nothing aggregated
            remote.finish()
    with pytest.raises(ValueError, match="asked to decrypt"):
        CKKSDevice().answer(1, 0, DECRYPT, b"")
    with pytest.raises(ValueError, match="no public context"):
        CKKSDevice().encrypt(b"12345678", np.ones(3))


def test_the_key_holder_decrypts_only_a_sum_of_enough_members_once_per_round(keys):
    public = he.read_public(keys / he.PUBLIC_FILE)
    holder = CKKSDevice(he.read_secret(keys / he.SECRET_FILE), min_members=3)
    aggregate = he.encrypt(public, np.ones(10))
    for members, match in (([0, 1], "sum of 2 client"), ([0, 1, 1], "members repeat"), ([], "sum of 0 client")):
        with pytest.raises(ValueError, match=match):
            holder.answer(4, 1, DECRYPT, decrypt_request(members, aggregate))
    with pytest.raises(ValueError, match="9 members announced"):
        holder.answer(4, 1, DECRYPT, b"\x09\0\0\0" + aggregate[:20])
    # refused requests decrypt nothing and count for nothing: the round's first acceptable one is decrypted
    total = holder.answer(4, 1, DECRYPT, decrypt_request([0, 2, 5], aggregate))
    np.testing.assert_allclose(np.frombuffer(total, "<f8"), np.ones(10), atol=1e-6)
    with pytest.raises(ValueError, match="second aggregate"):  # two sums of one round differ by one update
        holder.answer(4, 1, DECRYPT, decrypt_request([0, 2, 6], aggregate))
    with pytest.raises(ValueError, match="second aggregate"):
        holder.answer(4, 1, DECRYPT, decrypt_request([0, 2, 5, 6], aggregate))
    assert holder.answer(5, 1, DECRYPT, decrypt_request([0, 2, 5], aggregate)) == total and holder.decrypted == {4, 5}
    with pytest.raises(ValueError, match="at least 1"):
        CKKSDevice(min_members=0)
    # the server's round names its members: a round that sums one client only is not decrypted, it aborts
    engine = Devices({0: CKKSDevice(), 1: CKKSDevice(he.read_secret(keys / he.SECRET_FILE))})  # default: 2
    remote = CKKS(str(keys)).open_round([0], 1, engine=engine, round=1)
    assert remote.collect(0, engine.devices[0].encrypt(he.key_id(public), np.ones(10)), 10)
    with pytest.raises(ValueError, match="did not decrypt"):
        remote.finish()


def test_a_device_pinned_to_a_key_pair_refuses_any_other_public_key(keys, other_public):
    public = he.read_public(keys / he.PUBLIC_FILE)
    pinned = CKKSDevice(key_id=he.key_id(public))
    with pytest.raises(KeyPinError, match="--ckks-public pins key pair"):
        pinned.answer(1, 0, PUBLIC_KEY, other_public)
    assert pinned.contexts == {}  # it can never encrypt under the other key
    assert json.loads(pinned.answer(1, 0, PUBLIC_KEY, public))["key_id"] == he.key_id(public).hex()
    with pytest.raises(KeyPinError, match="--ckks-secret holds key pair"):  # the key holder is pinned to its pair
        CKKSDevice(he.read_secret(keys / he.SECRET_FILE)).answer(1, 0, PUBLIC_KEY, other_public)


def test_a_deployed_server_needs_key_files_so_it_never_makes_the_secret_key(tmp_path):
    config = load_config(None, [*OVERRIDES, *SMALL])  # no codec.ckks_keys
    with pytest.raises(ConfigError) as error:
        run_config(config, tmp_path / "run", engine=GrpcEngine(["client-1"]))
    assert error.value.key == "codec.ckks_keys"


class Trainer:
    def fit(self, params, data, config, state=None):
        return FitResult(np.full_like(params, 0.25), 10)


class Stub:
    """Answers the client's join, hands it one task and keeps what it submits."""

    def __init__(self, header, join=None):
        self.header, self.join, self.submitted = header, join, []

    def Join(self, hello, **kw):
        return self.join

    def Poll(self, request, **kw):
        return iter([pb.TaskChunk(header=self.header), pb.TaskChunk(params=np.zeros(3, np.float32).tobytes())])

    def Submit(self, messages, **kw):
        self.submitted.append(list(messages))
        return pb.SubmitReply(accepted=True)


def _task(client, **header):
    """The client's header and payload after one task with these header fields."""
    client.stub = Stub(pb.TaskHeader(task_id=1, round=1, client_id=0, **header))
    assert client.poll_once()
    (first, *rest), = client.stub.submitted
    return first.header, b"".join(m.payload for m in rest)


def test_a_key_holding_device_takes_the_public_key_encrypts_and_decrypts(keys, tmp_path):
    server_keys = shutil.copytree(keys, tmp_path / "server_keys")
    toml = to_toml(load_config(None, [*OVERRIDES, *SMALL, f"codec.ckks_keys={str(server_keys)!r}"]))
    shutil.rmtree(server_keys)  # codec.ckks_keys is a path on the server's machine, not on the device's
    np.savez(tmp_path / "data.npz", x=np.zeros((4, 3), np.float32), y=np.zeros(4, np.int64))
    client = Client("127.0.0.1:1", "token", tls=TlsSettings(insecure=True), trainer=Trainer(),
                    data=str(tmp_path / "data.npz"), ckks_secret=str(keys / he.SECRET_FILE))
    client.stub = Stub(None, pb.JoinReply(client="client-1", config_toml=toml, input_shape=[3], num_classes=2,
                                          heartbeat_s=60.0))
    client.join()
    assert client.ckks.key_holder is client.key_holder and client.secagg is None
    public = he.read_public(keys / he.PUBLIC_FILE)
    fit = dict(kind=pb.TaskHeader.FIT, fit_config_json="{}", params_bytes=12)
    header, _ = _task(client, **fit, protocol_stage=ENCRYPT, protocol_request=he.key_id(public))
    assert "no public context" in header.error  # it has not been sent the public key yet
    header, reply = _task(client, kind=pb.TaskHeader.PROTOCOL, protocol_stage=PUBLIC_KEY, protocol_request=public)
    assert not header.error and json.loads(reply) == {"key_id": he.key_id(public).hex(), "key_holder": True}
    header, ciphertext = _task(client, **fit, protocol_stage=ENCRYPT, protocol_request=he.key_id(public))
    assert not header.error and header.num_examples == 10
    header, plain = _task(client, **fit)  # a plain fit task: never an update in the clear
    assert "refusing to send an unmasked update" in header.error and plain == b""
    header, total = _task(client, kind=pb.TaskHeader.PROTOCOL, protocol_stage=DECRYPT,
                          protocol_request=decrypt_request([0, 1], ciphertext))
    np.testing.assert_allclose(np.frombuffer(total, "<f8"), np.full(3, 0.25), atol=1e-7)


def test_a_bad_secret_key_file_stops_the_client_at_once(keys):
    with pytest.raises(FedstackError, match="--ckks-secret"):
        Client("127.0.0.1:1", "token", tls=TlsSettings(insecure=True), trainer=Trainer(),
               ckks_secret=str(keys / he.PUBLIC_FILE))


# --- a real deployment on loopback ---

OVERRIDES = ["data.name=digits", "model.name=logreg", "client.lr=0.1", "privacy.clip_norm=2.0", "eval.every=0",
             "eval.federated=false", "server.rounds=2", 'codec.pipeline=["clip", "ckks"]']
SMALL = ["data.num_clients=4", "server.clients_per_round=4"]


def _deployment(tmp_path, keys, n):
    """Credentials for n clients, and the server's key directory: the public key, and in place of the secret
    key an empty decoy (config validation asks that the file exist; the deployed server must never read it)."""
    server_keys = tmp_path / "server_keys"
    server_keys.mkdir()
    shutil.copy(keys / he.PUBLIC_FILE, server_keys)
    (server_keys / he.SECRET_FILE).write_bytes(b"")
    overrides = [*OVERRIDES, f"data.num_clients={n}", f"server.clients_per_round={n}", f"server.min_clients={n}"]
    return make_credentials(tmp_path / "certs", n), overrides, f"codec.ckks_keys={str(server_keys)!r}"


def _finish(tmp_path, server, clients):
    """The server's stderr, its metrics and its last checkpoint, once it and its clients exited cleanly."""
    try:
        _, err = server.communicate(timeout=240)
        assert server.returncode == 0, err
        for c in clients:
            assert c.wait(timeout=60) == 0, c.stderr.read()
    finally:
        for p in [server, *clients]:
            p.kill()
    rounds = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    store = RunStore(tmp_path / "run" / "store.sqlite")
    checkpoint = store.checkpoint()
    store.close()
    return err, rounds, checkpoint


def test_a_deployed_encrypted_run_ends_where_the_simulation_does(tmp_path, keys):
    creds, overrides, server_keys = _deployment(tmp_path, keys, 3)  # three devices: each a process
    server, port = start_server(tmp_path, creds, [*overrides, server_keys], "--share-seed")
    # client 1 is also the key holder: it trains like the others and decrypts each round's sum
    clients = [start_client(port, creds, 1, "--partition", "0", "--ckks-secret", str(keys / he.SECRET_FILE)),
               *(start_client(port, creds, i, "--partition", str(i - 1)) for i in range(2, 4))]
    _, rounds, (last, deployed) = _finish(tmp_path, server, clients)
    assert [r["clients"] for r in rounds] == [3, 3] and all(r["ckks_rejected"] == 0 for r in rounds)
    # the public context (~465 kB) went to each client in round 1 only
    sent_once = rounds[0]["bytes_down"] - rounds[1]["bytes_down"]
    assert sent_once == pytest.approx(3 * (keys / he.PUBLIC_FILE).stat().st_size, rel=0.01)
    simulated = run_config(load_config(None, [*overrides, f"codec.ckks_keys={str(keys)!r}", "engine.name=local"]),
                           tmp_path / "sim")
    # the devices encrypt the very vectors the simulated ones do; CKKS adds ~1e-8 of noise per value
    assert last == 2 and np.allclose(deployed, simulated.params, rtol=0, atol=1e-6)
    assert rounds[-1]["test_accuracy"] == pytest.approx(simulated.rounds[-1]["test_accuracy"], abs=0.01)


def test_a_device_pinned_to_another_key_pair_refuses_the_servers_key_and_stops(tmp_path, keys, other_public):
    creds, overrides, server_keys = _deployment(tmp_path, keys, 1)
    (tmp_path / "other.bin").write_bytes(other_public)
    server, port = start_server(tmp_path, creds, [*overrides, server_keys])
    pinned = start_client(port, creds, 1, "--partition", "0", "--ckks-public", str(tmp_path / "other.bin"))
    try:
        # round 1 sends the public key to every connected client (before it looks for the key holder)
        assert pinned.wait(timeout=120) == 2
        lines = pinned.stderr.read().splitlines()  # one line, naming the pinned key pair
        assert lines == [f"error: --ckks-public pins key pair {he.key_id(other_public).hex()}, the server's public "
                         f"key is {he.key_id(he.read_public(keys / he.PUBLIC_FILE)).hex()}: refusing it"], lines
    finally:
        for p in (server, pinned):
            p.kill()
            p.communicate()
