"""Bad messages against a live server process: each is refused with a reason; the run goes on."""

import subprocess
import sys
import threading

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from fedstack.transport import PROTOCOL
from fedstack.transport import fedstack_pb2 as pb
from fedstack.transport import fedstack_pb2_grpc as pb_grpc
from fedstack.transport.security import make_credentials, read_token
from fedstack.transport.wire import GRPC_OPTIONS, chunks

RUN = ["--set", "data.name=digits", "--set", "data.num_clients=2", "--set", "model.name=logreg",
       "--set", "server.rounds=1", "--set", "server.clients_per_round=2", "--set", "server.min_clients=2",
       "--set", "eval.federated=false"]  # this test speaks the protocol by hand: fit tasks only


def meta(token):
    return (("authorization", f"Bearer {token}"),)


def submit(stub, token, header, payload=b"", pieces=None):
    messages = [pb.UpdateChunk(header=header)]
    messages += [pb.UpdateChunk(payload=p) for p in (pieces if pieces is not None else chunks(payload))]
    return stub.Submit(iter(messages), metadata=meta(token), timeout=30)


def poll_fit(stub, token):
    while True:
        stream = stub.Poll(pb.PollRequest(), metadata=meta(token), timeout=60)
        header = next(stream).header
        if header.kind == pb.TaskHeader.FIT:
            params = b"".join(c.params for c in stream)
            return header, np.frombuffer(params, np.float32)


@pytest.fixture
def live(tmp_path):
    creds = make_credentials(tmp_path / "certs", 2)
    server = subprocess.Popen([sys.executable, "-m", "fedstack.cli", "server", *RUN, "--clients",
                               str(creds / "clients.toml"), "--listen", "127.0.0.1:0", "--insecure",
                               "--out", str(tmp_path / "run"), "--quiet"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    port = int(server.stdout.readline().rsplit(":", 1)[1])
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=GRPC_OPTIONS)
    tokens = [read_token(creds / f"client-{i}.token") for i in (1, 2)]
    yield server, pb_grpc.FederationStub(channel), tokens
    channel.close()
    server.kill()


def test_bad_messages_are_refused_and_the_server_keeps_serving(live):
    server, stub, (t1, t2) = live
    for token in (None, "forged"):
        with pytest.raises(grpc.RpcError) as err:
            stub.Join(pb.Hello(protocol=PROTOCOL), metadata=meta(token) if token else (), timeout=30)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as err:
        stub.Join(pb.Hello(protocol=PROTOCOL + 1), metadata=meta(t1), timeout=30)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    tasks = {}
    threads = [threading.Thread(target=lambda t=t: tasks.__setitem__(t, poll_fit(stub, t))) for t in (t1, t2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    (h1, params), (h2, _) = tasks[t1], tasks[t2]
    good = np.zeros_like(params).tobytes()

    def header(**kw):
        base = dict(task_id=h1.task_id, round=h1.round, num_examples=10, payload_bytes=len(good))
        return pb.UpdateHeader(**{**base, **kw})

    cases = [
        (header(task_id=h2.task_id), good, "another client"),
        (header(round=h1.round + 1), good, "round"),
        (header(task_id=h1.task_id ^ 1), good, "not open"),
        (header(payload_bytes=5 << 30), good, "over the limit"),
        (header(), good[:-4], "announced"),
        (header(payload_bytes=len(good) - 4), good[:-4], "expected"),
        (header(), np.full(params.size, np.nan, np.float32).tobytes(), "non-finite"),
        (header(num_examples=-3), good, "negative"),
    ]
    for head, payload, reason in cases:
        reply = submit(stub, t1, head, payload)
        assert not reply.accepted and reason in reply.reason, (reason, reply.reason)
    # a message stream that does not start with a header
    reply = stub.Submit(iter([pb.UpdateChunk(payload=b"xx")]), metadata=meta(t1), timeout=30)
    assert not reply.accepted and "header" in reply.reason

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.binary(max_size=64), st.integers(0, 200), st.integers(-5, 5))
    def garbage_is_refused(data, announced, examples):
        reply = submit(stub, t1, header(payload_bytes=announced, num_examples=examples), pieces=[data])
        assert not reply.accepted and reply.reason

    garbage_is_refused()
    # the honest updates still go through and the run finishes
    assert submit(stub, t1, header(), good).accepted
    assert submit(stub, t2, pb.UpdateHeader(task_id=h2.task_id, round=h2.round, num_examples=10,
                                            payload_bytes=len(good)), good).accepted
    assert not submit(stub, t1, header(), good).accepted  # a replay of an answered task
    for token in (t1, t2):  # the clients hear that the run is over
        first = next(stub.Poll(pb.PollRequest(), metadata=meta(token), timeout=60)).header
        while first.kind == pb.TaskHeader.WAIT:
            first = next(stub.Poll(pb.PollRequest(), metadata=meta(token), timeout=60)).header
        assert first.kind == pb.TaskHeader.STOP
    out, err = server.communicate(timeout=60)
    assert server.returncode == 0, err
    assert "refused" in out


def test_a_deployed_server_rejects_an_update_over_the_norm_bound_and_records_why(tmp_path):
    """Validation runs on deployed updates too: a client's ×100 update is refused by the round's median-norm
    bound, counted under "norm" in the round's record, and the round goes on with the other two."""
    import json

    creds = make_credentials(tmp_path / "certs", 3)
    run = [a.replace("num_clients=2", "num_clients=3").replace("per_round=2", "per_round=3") for a in RUN]
    server = subprocess.Popen([sys.executable, "-m", "fedstack.cli", "server", *run, "--set", "server.max_norm_ratio=3",
                               "--clients", str(creds / "clients.toml"), "--listen", "127.0.0.1:0", "--insecure",
                               "--out", str(tmp_path / "run"), "--quiet"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline().rsplit(":", 1)[1])
        channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=GRPC_OPTIONS)
        stub = pb_grpc.FederationStub(channel)
        tokens = [read_token(creds / f"client-{i}.token") for i in (1, 2, 3)]
        tasks = {}
        threads = [threading.Thread(target=lambda t=t: tasks.__setitem__(t, poll_fit(stub, t))) for t in tokens]
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=120)
        for token, scale in zip(tokens, (0.01, 0.011, 1.0)):
            head, params = tasks[token]
            update = np.full(params.size, scale, np.float32).tobytes()
            reply = submit(stub, token, pb.UpdateHeader(task_id=head.task_id, round=head.round, num_examples=10,
                                                        payload_bytes=len(update)), update)
            assert reply.accepted  # well-formed: judged with the round's other updates once all are in
        _, err = server.communicate(timeout=120)
        assert server.returncode == 0, err
        channel.close()
    finally:
        server.kill()
    (record,) = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert record["rejected_by_reason"]["norm"] == 1 and record["clients"] == 2
    assert record["failures_by_kind"]["rejected"] == 1
