"""Personalised algorithms deployed (issue 21): a device keeps its personal part — in memory and in its --state
file, never sent —, the server sends the shared part (and, once, a device's first personal part), each device
judges its own model, and the run ends with a simulation's bits."""

import json
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np
import pytest

from deployment import run_to_end, start_client, start_server
from fedstack.client import FitConfig
from fedstack.errors import FedstackError
from fedstack.experiment import run_config
import fedstack.personal
from fedstack.personal import STATE_KEY, Ditto, FedRep, Personalization, Split, from_wire, register, to_wire
from fedstack.plan import load_config
from fedstack.store import RunStore
from fedstack.transport import PROTOCOL
from fedstack.transport import fedstack_pb2 as pb
from fedstack.transport import fedstack_pb2_grpc as pb_grpc
from fedstack.transport.client import Client, TaskRefused, TlsSettings
from fedstack.transport.security import make_credentials
from fedstack.transport.server import client_view, serve, wire_config

OVERRIDES = ["data.name=digits", "data.num_clients=3", "data.partition=shards", "model.name=mlp", "server.rounds=2",
             "server.clients_per_round=3", "server.min_clients=3", "server.strategy=fedper",
             "server.max_examples=100000", "seed=3"]
HEAD = 200 * 10 + 10  # mlp's last layer, 200 → 10: FedPer's personal part


def wait_for(path, process, timeout_s=120.0):
    end = time.monotonic() + timeout_s
    while not path.exists():
        assert process.poll() is None, process.stderr.read()
        assert time.monotonic() < end, f"{path} never appeared"
        time.sleep(0.05)


def test_deployed_fedper_ends_with_a_simulations_bits_and_each_device_keeps_its_personal_part(tmp_path):
    creds = make_credentials(tmp_path / "certs", 3)
    server, port = start_server(tmp_path, creds, OVERRIDES, "--share-seed")
    states = [tmp_path / f"state-{i}.npz" for i in range(3)]

    def device(i):
        return start_client(port, creds, i + 1, "--partition", str(i), "--state", str(states[i]))

    clients = [device(i) for i in range(3)]
    try:
        # Device 0 is killed once round 1's personal part is saved, and restarted: it carries on from its
        # --state file (asking for no first personal part), so the run still ends with the simulation's bits.
        wait_for(states[0], clients[0])
        clients[0].kill()
        clients[0].wait()
        clients[0] = device(0)
    except BaseException:
        for p in [server, *clients]:
            p.kill()
        raise
    run_to_end(server, clients)
    store = RunStore(tmp_path / "run" / "store.sqlite")
    last, deployed = store.checkpoint()
    assert all(store.get(cid) is None for cid in range(3))  # the server holds no personal part: the devices do
    store.close()
    simulated = run_config(load_config(None, [*OVERRIDES, "engine.name=local"]), tmp_path / "sim")
    assert last == 2 and np.array_equal(deployed, simulated.params)
    rounds = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    shared = deployed.size - HEAD
    for got, want in zip(rounds, simulated.rounds, strict=True):
        # each device's own model judged on its held-out split, as in simulation: the same figures
        assert got["personal"] == want["personal"] and got["personal"]["clients"] == 3
        for key in ("federated", "test_accuracy", "test_loss", "bytes_down", "bytes_up", "sampled", "clients"):
            assert got.get(key) == want.get(key), key
        assert got["bytes_down"] == got["bytes_up"] == 3 * 4 * shared  # only the shared part travels, each way
    assert rounds[-1]["personal"]["mean"] > rounds[-1]["federated"]["mean"]
    # the first personal part went once to each device; the restarted one had its own, from its state file
    firsts = [line for line in (tmp_path / "run" / "run.log").read_text().splitlines() if "its first" in line]
    assert sorted(line.split("INFO fedstack.transport: ")[1].split()[0] for line in firsts) == \
        ["client-1", "client-2", "client-3"], firsts
    sim_store = RunStore(tmp_path / "sim" / "store.sqlite")
    try:
        for cid in range(3):  # each device's state file holds the personal part the simulation kept for it
            with np.load(states[cid]) as kept:
                assert set(kept.files) == {STATE_KEY} and kept[STATE_KEY].shape == (HEAD,)
                assert np.array_equal(kept[STATE_KEY], sim_store.get(cid)[STATE_KEY])
    finally:
        sim_store.close()


def test_client_halves_travel_by_kind_and_a_registered_subclass_travels_too():
    for personal in (Personalization(Split(10, ((2, 4), (6, 10)))), FedRep(Split(5, ((3, 5),)), head_epochs=3),
                     Ditto(Split(7), lam=0.25)):
        wire = json.loads(wire_config(FitConfig(lr=0.1, personal=personal)))
        assert wire["lr"] == 0.1 and from_wire(wire["personal"], 10) == personal
    assert to_wire(FedRep(Split(5, ((3, 5),)), head_epochs=3)) == {"kind": "fedrep", "size": 5, "personal": [[3, 5]],
                                                                  "head_epochs": 3}

    @dataclass(frozen=True)
    class Clustered(Personalization):
        clusters: int = 2

    with pytest.raises(FedstackError, match="register"):  # unregistered: it would run its parent's fit on devices
        wire_config(FitConfig(personal=Clustered(Split(4))))
    register("test-clustered", Clustered)
    try:
        assert from_wire(to_wire(Clustered(Split(4), 3)), 4) == Clustered(Split(4), 3)
    finally:
        fedstack.personal._KINDS.pop("test-clustered")


@pytest.mark.parametrize("wire, received, why", [
    ({"kind": "nope"}, 6, "personal.kind: unknown 'nope'"),
    ({"kind": "ditto", "size": 8, "personal": [], "lam": 0.1, "extra": 1}, 8, "extra unknown"),
    ({"kind": "partial", "size": 8, "personal": [[5, 3]]}, 6, r"stretch \[5, 3\)"),
    ({"kind": "partial", "size": 1 << 40, "personal": []}, 6, "personal.size"),  # a split bigger than the model
    ({"kind": "partial", "size": 8, "personal": [[6, 8]]}, 7, "does not fit this device's model"),
    ({"kind": "fedrep", "size": 8, "personal": [[6, 8]], "head_epochs": -1}, 6, "personal.head_epochs"),
    ({"kind": "ditto", "size": 8, "personal": [], "lam": "0.1"}, 8, "personal.lam"),
])
def test_a_device_refuses_a_malformed_client_half_naming_the_key(wire, received, why):
    device = Client("127.0.0.1:1", "token", tls=TlsSettings(insecure=True), trainer=object())
    device.model_size = 8
    with pytest.raises(TaskRefused, match=why) as refused:
        device._personal(json.dumps(wire), received)
    assert "\n" not in str(refused.value)


def test_a_device_checks_the_first_personal_part_and_its_state_file(tmp_path):
    device = Client("127.0.0.1:1", "token", tls=TlsSettings(insecure=True), trainer=object(),
                    state_path=str(tmp_path / "s.npz"))
    personal, received = Personalization(Split(8, ((6, 8),))), np.arange(6, dtype=np.float32)
    with pytest.raises(TaskRefused, match="first personal part of 3 values"):
        device._with_personal(personal, received, np.zeros(3, np.float32))
    state = device._with_personal(personal, received, np.array([7, 9], np.float32))
    assert state[STATE_KEY].tolist() == [7, 9]  # kept from now on: the next Poll asks for none
    assert device._with_personal(personal, received, np.zeros(0, np.float32))[STATE_KEY].tolist() == [7, 9]
    device.state = {STATE_KEY: np.zeros(5, np.float32)}  # a state file of another run
    with pytest.raises(TaskRefused, match="s.npz: its personal part has 5 values"):
        device._with_personal(personal, received, np.zeros(0, np.float32))
    # Ditto's first personal model is the global model received: the server sends nothing for it
    device.state = {}
    assert device._with_personal(Ditto(Split(6)), received, np.zeros(0, np.float32))[STATE_KEY].tolist() == \
        received.tolist()


class OneBadTask(pb_grpc.FederationServicer):
    """A server whose one fit task carries a client half of an unknown kind; it records the device's reply."""

    def __init__(self, config_toml):
        self.config_toml, self.polls, self.replies = config_toml, 0, []

    def Join(self, request, context):
        return pb.JoinReply(client="client-1", config_toml=self.config_toml, protocol=PROTOCOL, input_shape=[1, 8, 8],
                            num_classes=10, heartbeat_s=1.0)

    def Heartbeat(self, request, context):
        return pb.Beat()

    def Poll(self, request, context):
        self.polls += 1
        if self.polls > 1:
            yield pb.TaskChunk(header=pb.TaskHeader(kind=pb.TaskHeader.STOP))
            return
        config = {**json.loads(wire_config(FitConfig())), "personal": {"kind": "nope", "size": 4, "personal": []}}
        yield pb.TaskChunk(header=pb.TaskHeader(kind=pb.TaskHeader.FIT, task_id=1, round=1,
                                                fit_config_json=json.dumps(config), params_bytes=16))
        yield pb.TaskChunk(params=np.zeros(4, np.float32).tobytes())

    def Submit(self, request_iterator, context):
        self.replies.extend(m.header for m in request_iterator if m.WhichOneof("part") == "header")
        return pb.SubmitReply(accepted=True)


def test_a_device_sent_an_unknown_kind_tells_the_server_and_stops_with_one_line(tmp_path):
    service = OneBadTask(client_view(load_config(None, OVERRIDES), share_seed=True))
    server, port = serve(service, "127.0.0.1:0")
    (tmp_path / "token").write_text("t0k3n\n")
    try:
        device = subprocess.run([sys.executable, "-m", "fedstack.cli", "client", "--server", f"127.0.0.1:{port}",
                                 "--insecure", "--token-file", str(tmp_path / "token"), "--partition", "0"],
                                capture_output=True, text=True, timeout=120)
    finally:
        server.stop(0)
    lines = [line for line in device.stderr.splitlines() if line.strip() and not line.startswith("WARNING: plaintext")]
    assert device.returncode == 2 and len(lines) == 1, device.stderr
    assert lines[0].startswith("error: the server's task: personal.kind: unknown 'nope'"), lines
    assert len(service.replies) == 1 and "personal.kind: unknown 'nope'" in service.replies[0].error


@pytest.mark.parametrize("strategy", ["ifca", "cfl"])
def test_deployed_clustered_training_ends_with_a_simulations_bits(tmp_path, strategy):
    """IFCA deployed: each device receives the k models, trains the one it picks and sends it alone, naming its
    cluster. CFL deployed: each device receives only its own cluster's model, and a split happens. Either
    way the server's clusters, models and each device's own-model figures are the simulation's."""
    overrides = ["data.name=digits", "data.num_clients=4", "data.partition=clusters", "data.clusters=2",
                 "data.cluster_transform=permute_labels", "model.name=logreg", "server.rounds=3",
                 "server.clients_per_round=4", "server.min_clients=4", f"server.strategy={strategy}",
                 "personal.clusters=2", "personal.cfl_warmup=1", "personal.cfl_eps1=100", "personal.cfl_eps2=0.001",
                 "server.max_examples=100000", "seed=3"]
    creds = make_credentials(tmp_path / "certs", 4)
    server, port = start_server(tmp_path, creds, overrides, "--share-seed")
    run_to_end(server, [start_client(port, creds, i + 1, "--partition", str(i)) for i in range(4)])
    store = RunStore(tmp_path / "run" / "store.sqlite")
    _, deployed = store.checkpoint()
    store.close()
    simulated = run_config(load_config(None, [*overrides, "engine.name=local"]), tmp_path / "sim")
    assert np.array_equal(deployed, simulated.params)
    rounds = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    for got, want in zip(rounds, simulated.rounds, strict=True):
        for key in ("personal", "clusters", "cluster_ari", "test_accuracy", "bytes_down", "bytes_up"):
            assert got.get(key) == want.get(key), key
        # IFCA: k = 2 models down, one up; CFL: each device its own cluster's model, each way
        assert got["bytes_down"] == (2 if strategy == "ifca" else 1) * got["bytes_up"]
    if strategy == "cfl":
        assert max(rounds[-1]["clusters"]) == 1 and deployed.size == 2 * rounds[0]["bytes_up"] // 16
