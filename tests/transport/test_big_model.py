"""A 100 MB model crosses gRPC's 4 MiB message limit in chunks, both ways, bit-exact."""

import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np

from fedstack.transport import CHUNK_BYTES, PROTOCOL
from fedstack.transport import fedstack_pb2 as pb
from fedstack.transport import fedstack_pb2_grpc as pb_grpc
from fedstack.transport.security import make_credentials, read_token
from fedstack.transport.wire import GRPC_OPTIONS, chunks


def test_a_100_mb_model_goes_down_and_its_update_comes_back(tmp_path):
    creds = make_credentials(tmp_path / "certs", 1)
    server = subprocess.Popen([sys.executable, str(Path(__file__).with_name("big_server.py")),
                               str(creds / "clients.toml")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    try:
        port = int(server.stdout.readline().rsplit(":", 1)[1])
        meta = (("authorization", f"Bearer {read_token(creds / 'client-1.token')}"),)
        stub = pb_grpc.FederationStub(grpc.insecure_channel(f"127.0.0.1:{port}", options=GRPC_OPTIONS))
        stub.Join(pb.Hello(protocol=PROTOCOL), metadata=meta, timeout=30)
        while True:
            stream = stub.Poll(pb.PollRequest(), metadata=meta, timeout=60)
            header = next(stream).header
            if header.kind == pb.TaskHeader.FIT:
                break
        pieces = [c.params for c in stream]
        assert len(pieces) == -(-header.params_bytes // CHUNK_BYTES) and header.params_bytes == 100_000_000
        params = np.frombuffer(b"".join(pieces), np.float32)
        assert params[-1] == 24_999_999
        payload = (-params).tobytes()
        messages = [pb.UpdateChunk(header=pb.UpdateHeader(task_id=header.task_id, round=header.round,
                                                          num_examples=1, payload_bytes=len(payload)))]
        reply = stub.Submit(iter(messages + [pb.UpdateChunk(payload=p) for p in chunks(payload)]),
                            metadata=meta, timeout=60)
        assert reply.accepted, reply.reason
        assert server.stdout.readline().strip() == "match"
        assert server.wait(timeout=60) == 0
    finally:
        server.kill()
