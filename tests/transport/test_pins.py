"""Client-side pins against an active server: `fedstack client --require secagg|ckks|dp` refuses a server
whose config would let this device's update leave unprotected, at every join and every task.

The first tests check the pins in-process (the config checks, a client behind a stub server); the last one
starts a real server on loopback, over TLS with tokens, and clients that refuse it.
"""

import json

import numpy as np
import pytest

from deployment import start_client, start_server
from fedstack.cli import main
from fedstack.client import FitResult
from fedstack.config import to_toml
from fedstack.plan import load_config
from fedstack.errors import FedstackError
from fedstack.transport import fedstack_pb2 as pb
from fedstack.transport.client import Client, PinError, TlsSettings, check_pins, dp_by_clients, pins
from fedstack.transport.security import make_credentials

BASE = ["data.name=digits", "model.name=logreg", "client.lr=0.1", "eval.every=0", "eval.federated=false",
        "data.num_clients=3", "server.clients_per_round=3", "server.min_clients=3", "server.rounds=1"]
CENTRAL = ['codec.pipeline=["clip"]', "privacy.noise_multiplier=0.5"]  # the server adds the noise
LOCAL = ['codec.pipeline=["clip", "gaussian"]', "privacy.noise_multiplier=0.5", 'privacy.mode="local"']
DISTRIBUTED = ['codec.pipeline=["clip", "gaussian", "secagg"]', "privacy.noise_multiplier=0.5",
               'privacy.mode="distributed"']


def _config(*overrides):
    return load_config(None, [*BASE, *overrides])


def test_the_pins_name_what_the_servers_config_lacks():
    met = {"central": ((), CENTRAL), "local": ({"dp"}, LOCAL), "distributed": ({"dp", "secagg"}, DISTRIBUTED),
           "dp-sgd": ({"dp"}, ["client.dp_sgd=true"]), "ckks": ({"ckks"}, ['codec.pipeline=["clip", "ckks"]']),
           "plain": ((), [])}
    for name, (protections, overrides) in met.items():
        config = _config(*overrides)
        for pin in ("secagg", "ckks", "dp"):
            if pin in protections:
                check_pins(config, {pin})
            else:
                with pytest.raises(PinError, match=f"^--require {pin}: the server's "):
                    check_pins(config, {pin})
    assert dp_by_clients(_config(*LOCAL)) == "gaussian" and dp_by_clients(_config("client.dp_sgd=true")) == "dp-sgd"
    with pytest.raises(PinError, match="only central DP"):  # the server sees each update before it adds noise
        check_pins(_config(*CENTRAL), {"dp"})
    with pytest.raises(PinError, match="no DP noise added on the device"):  # clipping alone, or no noise
        check_pins(_config('codec.pipeline=["clip"]', 'privacy.mode="local"'), {"dp"})
    with pytest.raises(PinError, match="no DP noise added on the device"):
        check_pins(_config("client.dp_sgd=true", "client.dp_noise_multiplier=0"), {"dp"})
    with pytest.raises(PinError) as both:  # every unmet pin, on one line
        check_pins(_config(*CENTRAL), {"secagg", "dp"})
    assert "--require secagg" in str(both.value) and "--require dp" in str(both.value) and "\n" not in str(both.value)


def test_the_pins_of_the_command_line(tmp_path, capsys):
    assert pins(["secagg,dp", " secagg"]) == (frozenset({"secagg", "dp"}), None)
    with pytest.raises(FedstackError, match="--require tls: unknown"):
        pins(["secagg,tls"])
    with pytest.raises(FedstackError, match="--ckks-public .*not a CKKS public key"):
        pins([], str(tmp_path / "missing.bin"))
    # without a pinned key, an active server could hand out a public key whose secret key it holds
    (tmp_path / "token").write_text("t")
    argv = ["client", "--server", "127.0.0.1:1", "--token-file", str(tmp_path / "token"), "--insecure"]
    assert main([*argv, "--require", "ckks"]) == 2
    assert capsys.readouterr().err.startswith("error: --require ckks needs --ckks-public FILE")
    assert main([*argv, "--min-members", "0"]) == 2
    assert capsys.readouterr().err == "error: --min-members must be at least 1, got 0\n"


class Trainer:
    def fit(self, params, data, config, state=None):
        return FitResult(np.full_like(params, 0.25), 10)


class Stub:
    """Answers the client's join with `config`, hands it `header`'s task and keeps what it submits."""

    def __init__(self, config, header=None):
        self.config, self.header, self.submitted = config, header, []

    def Join(self, hello, **kw):
        return pb.JoinReply(client="client-1", config_toml=to_toml(self.config), input_shape=[3], num_classes=2,
                            heartbeat_s=60.0)

    def Poll(self, request, **kw):
        return iter([pb.TaskChunk(header=self.header), pb.TaskChunk(params=np.zeros(3, np.float32).tobytes())])

    def Submit(self, messages, **kw):
        self.submitted.append(list(messages))
        return pb.SubmitReply(accepted=True)


def _client(tmp_path, *require):
    np.savez(tmp_path / "data.npz", x=np.zeros((4, 3), np.float32), y=np.zeros(4, np.int64))
    return Client("127.0.0.1:1", "token", tls=TlsSettings(insecure=True), trainer=Trainer(),
                  data=str(tmp_path / "data.npz"), require=require)


def test_a_rejoin_rechecks_the_pins_against_the_restarted_servers_config(tmp_path):
    client = _client(tmp_path, "secagg", "dp")
    client.stub = Stub(_config(*DISTRIBUTED))
    client.join()
    summing = client.summing
    assert summing.name == "secagg" and client.secagg is not None
    client.stub = Stub(_config(*CENTRAL))  # the server came back without secure aggregation or device noise
    with pytest.raises(PinError, match="--require secagg: .*; --require dp: .*only central DP"):
        client.join()
    assert client.summing is summing  # the pipeline is the first join's: a rejoin never rebuilds it


def test_a_server_cannot_turn_dp_sgd_off_for_one_task(tmp_path):
    client = _client(tmp_path, "dp")
    client.stub = Stub(_config("client.dp_sgd=true", "client.dp_noise_multiplier=1.0"))
    client.join()
    fit = dict(kind=pb.TaskHeader.FIT, task_id=1, round=1, client_id=0, params_bytes=12)
    for asked in ({"dp_sgd": False}, {"dp_sgd": True, "dp_noise_multiplier": 0.1}):
        client.stub.header = pb.TaskHeader(**fit, fit_config_json=json.dumps(asked))
        with pytest.raises(FedstackError, match="--require dp: the server's task asks for dp_sgd="):
            client.poll_once()
        (first, *payload), = client.stub.submitted  # the server hears why; no update leaves
        assert "refusing to train" in first.header.error and not payload
        client.stub.submitted.clear()
    client.stub.header = pb.TaskHeader(**fit, fit_config_json=json.dumps({"dp_sgd": True, "dp_noise_multiplier": 1.0}))
    assert client.poll_once()
    (first, *payload), = client.stub.submitted
    assert not first.header.error and payload


def test_clients_refuse_a_real_server_without_the_protections_they_require(tmp_path):
    creds = make_credentials(tmp_path / "certs", 3)
    server, port = start_server(tmp_path, creds, [*BASE, *CENTRAL])  # waits for 3 clients: it never starts
    clients = {pin: start_client(port, creds, i, "--partition", str(i - 1), "--require", pin)
               for i, pin in ((1, "secagg"), (2, "dp"))}
    try:
        for pin, expected in (("secagg", "error: --require secagg: the server's codec.pipeline ['clip'] has no "
                               "\"secagg\" stage"), ("dp", "error: --require dp: the server's config has only "
                                                           "central DP")):
            assert clients[pin].wait(timeout=120) == 2
            lines = clients[pin].stderr.read().splitlines()
            assert len(lines) == 1 and lines[0].startswith(expected), lines
    finally:
        for p in (server, *clients.values()):
            p.kill()
            p.communicate()
