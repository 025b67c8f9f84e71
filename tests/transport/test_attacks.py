"""Attacks by a client holding one valid token, replayed against a live TLS server process on loopback.

One server runs the module's attacks (digits, logreg, codec pipeline clip → zstd, central DP noise),
beside an honest `fedstack client` process that keeps training throughout. The attacker is a raw gRPC
client on the project's own stubs. Each attack must be refused (or harmless) with the server still
serving: its reply says why in a short line, the server's peak RSS stays under twice its idle RSS,
and an honest client's heartbeats stay fast.
"""

import threading
import time

import grpc
import numpy as np
import pytest
import zstandard

from deployment import start_client, start_server
from fedstack.codec import CodecContext, build_pipeline
from fedstack.codec.lossless import _ZSTD_HEADER, KIND_BYTES, KIND_FLOAT32
from fedstack.codec.quantize import CODEC_IDS, FORMAT_VERSION
from fedstack.seeding import rng, stable_hash
from fedstack.transport import PROTOCOL
from fedstack.transport import fedstack_pb2 as pb
from fedstack.transport import fedstack_pb2_grpc as pb_grpc
from fedstack.transport.security import make_credentials, read_token
from fedstack.transport.wire import GRPC_OPTIONS, chunks

SEED, CLIP, NOISE = 0, 1.0, 1.0
RUN = ["data.name=digits", "data.num_clients=3", "model.name=logreg", "server.rounds=1000",
       "server.clients_per_round=2", "server.min_clients=1", "eval.every=0", "eval.federated=false",
       'codec.pipeline=["clip", "zstd"]', 'privacy.mode="central"', f"privacy.noise_multiplier={NOISE}",
       f"privacy.clip_norm={CLIP}", f"seed={SEED}"]
ATTACKER_BOUND = 100  # the attacker's max_examples in clients.toml
GiB = 1 << 30


def vm(pid: int, field: str) -> int:
    """A /proc/PID/status figure in bytes (VmRSS: now, VmHWM: the peak since the last reset)."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


class Attacker:
    """A client that speaks the wire protocol by hand, with client-1's valid token."""

    def __init__(self, port, creds, name="client-1"):
        credentials = grpc.ssl_channel_credentials(root_certificates=(creds / "ca.pem").read_bytes())
        self.channel = grpc.secure_channel(f"localhost:{port}", credentials, options=GRPC_OPTIONS)
        self.stub = pb_grpc.FederationStub(self.channel)
        self.meta = (("authorization", f"Bearer {read_token(creds / f'{name}.token')}"),)
        self.join = self.stub.Join(pb.Hello(protocol=PROTOCOL), metadata=self.meta, timeout=30)

    def task(self, timeout=60):
        """(header, params) of the next fit task handed to this client."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            stream = self.stub.Poll(pb.PollRequest(), metadata=self.meta, timeout=30)
            header = next(stream).header
            if header.kind == pb.TaskHeader.FIT:
                return header, np.frombuffer(b"".join(c.params for c in stream), np.float32)
        raise AssertionError("no task within the timeout")

    def submit(self, header, payload=b"", pieces=None):
        messages = [pb.UpdateChunk(header=header)]
        messages += [pb.UpdateChunk(payload=p) for p in (pieces if pieces is not None else chunks(payload))]
        return self.stub.Submit(iter(messages), metadata=self.meta, timeout=60)

    def give_up(self, task):
        """Close the task (a reported failure), so its round goes on without waiting for us."""
        reply = self.submit(pb.UpdateHeader(task_id=task.task_id, round=task.round, error="giving up"))
        assert reply.accepted, reply.reason


def zstd_bomb(kind: int, size: int = GiB) -> bytes:
    """A zstd payload of the pipeline's format declaring `size` bytes of zeros: a few dozen KB on the wire."""
    compressor = zstandard.ZstdCompressor(level=1, write_checksum=True, write_content_size=True)
    stream = compressor.compressobj(size=size)
    zeros = bytes(64 << 20)
    frame = b"".join(stream.compress(zeros) for _ in range(size // len(zeros))) + stream.flush()
    return _ZSTD_HEADER.pack(CODEC_IDS["zstd"], FORMAT_VERSION, kind) + frame


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("attacks")
    creds = make_credentials(tmp / "certs", 3)
    registry = (creds / "clients.toml").read_text()
    (creds / "clients.toml").write_text(registry.replace('name = "client-1"\n',
                                                         f'name = "client-1"\nmax_examples = {ATTACKER_BOUND}\n'))
    log = open(tmp / "server.log", "w")
    server, port = start_server(tmp, creds, RUN, "--deadline", "30", "--heartbeat", "1", stderr=log)
    threading.Thread(target=server.stdout.read, daemon=True).start()  # a line a round: never let the pipe fill
    honest = start_client(port, creds, 2, "--partition", "1")
    attacker = Attacker(port, creds)
    metrics = tmp / "run" / "metrics.jsonl"
    end = time.monotonic() + 120
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2):  # warm: model built, rounds running
        assert server.poll() is None and time.monotonic() < end, (tmp / "server.log").read_text()[-2000:]
        time.sleep(0.1)
    idle = vm(server.pid, "VmRSS")
    open(f"/proc/{server.pid}/clear_refs", "w").write("5")  # reset the peak (VmHWM) to now
    yield server, attacker, honest, creds, port, tmp, idle
    attacker.channel.close()
    for p in (server, honest):
        p.kill()
    log.close()


def still_serving(live):
    """The server is alive, under twice its idle RSS at its peak, and the honest client's rounds go on."""
    server, attacker, honest, creds, port, tmp, idle = live
    assert server.poll() is None and honest.poll() is None
    peak = vm(server.pid, "VmHWM")
    print(f"server RSS: idle {idle / 2**20:.0f} MiB, peak {peak / 2**20:.0f} MiB")
    assert peak < 2 * idle, f"peak RSS {peak / 2**20:.0f} MiB, idle {idle / 2**20:.0f} MiB"
    metrics = tmp / "run" / "metrics.jsonl"
    before = metrics.read_text().count("\n")
    end = time.monotonic() + 60
    while metrics.read_text().count("\n") <= before:
        assert time.monotonic() < end, "no round finished within 60 s"
        time.sleep(0.1)
    assert (tmp / "server.log").stat().st_size < 1 << 20  # no payload copied into the log


def test_a_decompression_bomb_is_refused_unread(live):
    attacker = live[1]
    # 1 GiB in 32 KB is over what a reply for this model may announce; 192 MiB in 6 KB passes that check
    # and is refused from the frame's header: the wrong kind of content, or more than the model's 4·size bytes.
    cases = ((KIND_BYTES, GiB, "over the limit"), (KIND_BYTES, 192 << 20, "content kind"),
             (KIND_FLOAT32, 192 << 20, "exceeds"))
    for kind, size, why in cases:
        bomb = zstd_bomb(kind, size)
        assert len(bomb) < 40_000
        task, _ = attacker.task()
        started = time.monotonic()
        reply = attacker.submit(pb.UpdateHeader(task_id=task.task_id, round=task.round, num_examples=10,
                                                payload_bytes=len(bomb)), bomb)
        assert not reply.accepted and why in reply.reason and len(reply.reason) <= 201, reply.reason
        print(f"zstd bomb of {size >> 20} MiB in {len(bomb)} bytes: refused in {time.monotonic() - started:.3f} s")
        assert time.monotonic() - started < 2.0
        attacker.give_up(task)
    still_serving(live)


def test_an_announced_flood_is_refused_before_its_payload_is_read(live):
    attacker = live[1]
    task, _ = attacker.task()
    piece = bytes(1 << 20)
    for task_id, why in ((task.task_id ^ 0x5A5A, "not open"), (task.task_id, "over the limit")):
        # 400 MiB offered: the server answers from the header; its peak RSS shows it buffered none of it
        reply = attacker.submit(pb.UpdateHeader(task_id=task_id, round=task.round, num_examples=10,
                                                payload_bytes=400 << 20), pieces=(piece for _ in range(400)))
        assert not reply.accepted and why in reply.reason, reply.reason
    attacker.give_up(task)
    still_serving(live)


def test_a_forged_example_count_is_refused_and_a_bounded_one_counts(live):
    attacker = live[1]
    task, params = attacker.task()
    ctx = CodecContext(task.round, task.client_id, 0)
    update = build_pipeline(["clip", "zstd"]).encode(np.full(params.size, 0.5, np.float32), ctx)
    head = dict(task_id=task.task_id, round=task.round, payload_bytes=len(update))
    reply = attacker.submit(pb.UpdateHeader(num_examples=2**62, **head), update)
    assert not reply.accepted and f"over the {ATTACKER_BOUND}" in reply.reason, reply.reason
    assert attacker.submit(pb.UpdateHeader(num_examples=ATTACKER_BOUND, **head), update).accepted
    still_serving(live)


def test_a_client_cannot_recompute_the_servers_noise(live):
    """The attack that worked when the deployed server drew its DP noise from the run seed: submit a zero
    update beside the honest client, then subtract the seed's noise from the next global model's step.
    Now the seed is not even sent (the client view carries a one-way function of it), and the noise comes
    from the operating system: what is left is noise, not the honest client's clipped update (norm C)."""
    attacker = live[1]
    assert f"seed = {SEED}\n" not in attacker.join.config_toml
    for _ in range(5):  # two consecutive rounds in which we took part
        task, before = attacker.task()
        payload = build_pipeline(["clip", "zstd"]).encode(np.zeros(before.size, np.float32),
                                                          CodecContext(task.round, task.client_id, 0))
        assert attacker.submit(pb.UpdateHeader(task_id=task.task_id, round=task.round, num_examples=1,
                                               payload_bytes=len(payload)), payload).accepted
        following, after = attacker.task()
        attacker.give_up(following)
        if following.round == task.round + 1:
            break
    else:
        pytest.fail("never sampled in two consecutive rounds")
    seeded = rng(SEED, "noise", stable_hash("server"), task.round).normal(0.0, NOISE * CLIP, before.size)
    recovered = 2 * (after.astype(np.float64) - before) - seeded  # Σ updates = clients_per_round · step − noise
    print(f"norm of the 'recovered' update: {np.linalg.norm(recovered):.1f} (C = {CLIP})")
    assert np.linalg.norm(recovered) > 5 * CLIP  # with the seeded noise this was the honest update: norm 1.000
    still_serving(live)


def test_a_poll_flood_does_not_starve_honest_heartbeats(live):
    server, attacker, honest, creds, port, tmp, idle = live
    stop = threading.Event()
    polls = []

    def poll_forever():
        while not stop.is_set():
            try:
                for _ in attacker.stub.Poll(pb.PollRequest(), metadata=attacker.meta, timeout=30):
                    pass
                polls.append(1)
            except grpc.RpcError:
                polls.append(0)

    flooders = [threading.Thread(target=poll_forever) for _ in range(40)]
    for t in flooders:
        t.start()
    time.sleep(1.0)
    other = Attacker(port, creds, "client-3")  # another identity's heartbeats, timed during the flood
    latencies = []
    for _ in range(20):
        started = time.monotonic()
        other.stub.Heartbeat(pb.Beat(), metadata=other.meta, timeout=10)
        latencies.append(time.monotonic() - started)
        time.sleep(0.1)
    stop.set()
    for t in flooders:
        t.join(timeout=60)
    other.channel.close()
    print(f"heartbeats during a flood of 40 polls: max {max(latencies) * 1000:.0f} ms, {len(polls)} polls answered")
    assert max(latencies) < 1.0, latencies
    assert len(polls) > 40  # superseded polls return at once instead of holding a thread each
    still_serving(live)


def test_a_task_whose_stream_broke_goes_out_again(live):
    attacker = live[1]
    stream = attacker.stub.Poll(pb.PollRequest(), metadata=attacker.meta, timeout=30)
    header = next(stream).header
    while header.kind != pb.TaskHeader.FIT:
        stream = attacker.stub.Poll(pb.PollRequest(), metadata=attacker.meta, timeout=30)
        header = next(stream).header
    stream.cancel()  # cut after the header: the parameters never arrive
    again, params = attacker.task(timeout=10)
    assert again.task_id == header.task_id and params.size > 0
    attacker.give_up(again)
    still_serving(live)
