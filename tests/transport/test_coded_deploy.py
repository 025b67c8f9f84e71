"""Coded training deployed (issue 22): each device encodes its parity set once, from the operating system's
entropy, and sends it as round 0's reply; the server checks it like an update (size, finite values; a refusal
counted and the run goes on), sums the parity sets and trains with them."""

import json
import subprocess
import sys
import threading

import grpc
import numpy as np

from fedstack.transport import PROTOCOL
from fedstack.transport import fedstack_pb2 as pb
from fedstack.transport import fedstack_pb2_grpc as pb_grpc
from fedstack.transport.security import make_credentials, read_token
from fedstack.transport.wire import GRPC_OPTIONS, chunks

RUN = ["data.name=digits", "data.num_clients=3", "data.partition=iid", "model.name=rff", "server.strategy=coded",
       "coded.features=64", "coded.redundancy=0.2", "server.clients_per_round=3", "server.min_clients=3",
       "server.rounds=4", "eval.federated=false"]


def meta(token):
    return (("authorization", f"Bearer {token}"),)


def submit(stub, token, header, payload):
    messages = [pb.UpdateChunk(header=header), *(pb.UpdateChunk(payload=p) for p in chunks(payload))]
    return stub.Submit(iter(messages), metadata=meta(token), timeout=30)


class Rogue:
    """Client 3 speaking the protocol by hand: a bad parity set first, then a zero one; zero updates after."""

    def __init__(self, stub, token):
        self.stub, self.token, self.replies, self.parity_request = stub, token, [], None

    def run(self):
        self.stub.Join(pb.Hello(protocol=PROTOCOL), metadata=meta(self.token), timeout=30)
        while True:
            stream = self.stub.Poll(pb.PollRequest(), metadata=meta(self.token), timeout=60)
            header = next(stream).header
            if header.kind == pb.TaskHeader.STOP:
                return
            if header.kind != pb.TaskHeader.FIT:
                continue
            params = np.frombuffer(b"".join(c.params for c in stream), np.float32)

            def reply(payload, **kw):
                head = pb.UpdateHeader(task_id=header.task_id, round=header.round, num_examples=10,
                                       payload_bytes=len(payload))
                for key, value in kw.items():
                    setattr(head, key, value)
                return submit(self.stub, self.token, head, payload)

            request = json.loads(header.fit_config_json).get("parity")
            if request is None:
                reply(np.zeros_like(params).tobytes())
                continue
            self.parity_request = request
            size = request["rows"] * request["width"]
            self.replies = [reply(np.full(size, np.nan, np.float32).tobytes()),  # values that are not finite
                            reply(np.zeros(size + 1, np.float32).tobytes()),  # more than the set holds
                            reply(np.zeros(params.size, np.float32).tobytes()),  # a model update, not a parity set
                            reply(np.zeros(size, np.float32).tobytes())]  # a (useless) parity set of the right size


def test_a_deployed_coded_run_gathers_parity_checks_it_and_trains(tmp_path):
    creds = make_credentials(tmp_path / "certs", 3)
    sets = [a for o in RUN for a in ("--set", o)]
    server = subprocess.Popen([sys.executable, "-m", "fedstack.cli", "server", *sets, "--clients",
                               str(creds / "clients.toml"), "--listen", "127.0.0.1:0", "--insecure",
                               "--out", str(tmp_path / "run"), "--quiet"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    port = int(server.stdout.readline().rsplit(":", 1)[1])
    clients = [subprocess.Popen([sys.executable, "-m", "fedstack.cli", "client", "--server", f"127.0.0.1:{port}",
                                 "--token-file", str(creds / f"client-{i + 1}.token"), "--partition", str(i),
                                 "--insecure"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for i in range(2)]
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=GRPC_OPTIONS)
    rogue = Rogue(pb_grpc.FederationStub(channel), read_token(creds / "client-3.token"))
    thread = threading.Thread(target=rogue.run, daemon=True)
    try:
        thread.start()
        out, err = server.communicate(timeout=240)
        assert server.returncode == 0, err
        for c in clients:
            assert c.wait(timeout=60) == 0, c.stderr.read()
        thread.join(timeout=60)
    finally:
        for p in [server, *clients]:
            p.kill()
        channel.close()
    request = rogue.parity_request
    assert request["width"] == 64 + 10 and request["rows"] > 0 and 0 < request["arrival"] <= 1
    nan, over, update, good = rogue.replies
    assert not nan.accepted and "finite" in nan.reason
    assert not over.accepted and "over the limit" in over.reason
    assert not update.accepted and update.reason
    assert good.accepted
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    first = records[0]
    size = request["rows"] * request["width"]
    assert first["parity_clients"] == 3 and first["parity_bytes_up"] == 3 * 4 * size
    assert first["parity_rows"] == request["rows"] and first["bytes_up"] == first["parity_bytes_up"] + 3 * 4 * 64 * 10
    assert "refused 2 × malformed" in out and "refused 1 × size" in out, out  # counted, and the run went on
    # trained with two honest devices' gradients and parity: far above chance on digits
    assert records[-1]["test_accuracy"] > 0.5, records[-1]
