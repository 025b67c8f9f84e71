"""The deployment side of the server: a gRPC service whose connected clients form an Engine."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import json
import logging
import queue
import secrets
import threading
import time
from concurrent import futures
from typing import Iterator

import numpy as np

from ..engine import Engine, EvalTask, FitReply, Outcome, Workload, execute
from ..errors import FedstackError, brief
from ..personal import Personalization, to_wire
from ..sampling import Sampler
from ..seeding import rng
from . import PROTOCOL
from . import fedstack_pb2 as pb
from . import fedstack_pb2_grpc as pb_grpc
from .replies import ReplyRules
from .wire import GRPC_OPTIONS, assemble, chunks

log = logging.getLogger("fedstack.transport")


@dataclasses.dataclass(frozen=True)
class ClientStatus:
    """One registered client as the operator sees it (`GrpcEngine.status`)."""

    client: str
    # "training" (holds an open task), "connected" (heard from within three heartbeat intervals), "lost"
    # (heard from before, silent since), "offline" (never heard from)
    state: str
    last_seen_s: float | None  # seconds since the server last heard from it (None: never)
    joins: int  # Join calls: more than one means the device restarted or reconnected
    rounds: int = 0  # training replies of its the server accepted
    refused: int = 0  # its messages the server refused
    uplink_bytes_per_s: float | None = None  # its last accepted reply's bytes over the time they took to arrive


@dataclasses.dataclass(frozen=True)
class ServerStatus:
    """What a deployed server is doing now: its clients, the round its open tasks belong to, its refusals."""

    clients: list[ClientStatus]
    round: int | None  # the round of the tasks out now (None: none out)
    refused: dict[str, int]  # refused messages by reason (size, malformed, stale, foreign, ...)

    @property
    def connected(self) -> int:
        return sum(c.state in ("training", "connected") for c in self.clients)

    def to_json(self) -> dict:
        return {"clients": [dataclasses.asdict(c) for c in self.clients], "connected": self.connected,
                "registered": len(self.clients), "round": self.round, "refused": dict(self.refused)}


@dataclasses.dataclass(frozen=True)
class ProtocolTask:
    """One step of a protocol the round runs with a client (secagg, ckks): a message to answer."""

    round: int
    client_id: int
    stage: str
    request: bytes = dataclasses.field(repr=False)


@dataclasses.dataclass
class _Assignment:
    """A task handed to a client, awaited by the round."""

    task_id: int
    index: int
    name: str
    round: int
    task: object
    results: queue.Queue  # the awaiting round's inbox; a late answer lands in a discarded one


class GrpcEngine(Engine):
    """Runs fit tasks on the clients connected over gRPC; evaluates the test set locally.

    Client ids are positions in the registry's list of names. A task not answered within
    `deadline_s` is a dropout; a refused update (foreign, replayed, late, malformed) is
    counted in `refused` by reason and the client is told why. `exchange` runs one step of a
    protocol (secure or homomorphic aggregation) with several clients: each gets a message and
    answers it; `session` tells whether a client has joined again since (a restarted client has
    lost what earlier steps gave it).

    What one client, even with a valid token, can make the server do is bounded: a reply's header is
    checked (open task, its owner, its round, an announced size no larger than the model and pipeline
    allow) before its payload is read; one update per client arrives at a time; a newer Poll of a
    client ends its older one; a payload is decoded once, outside the lock; an update's weight is
    bounded by `max_examples` (by client name; a missing or 0 bound weighs every update 1). A client
    that polls while its task is still open never got it, or lost it: the task goes out again.

    Under a personalised algorithm the devices keep their personal parts; the server sends each device the
    shared part with every task, the algorithm's client half (`to_wire`) with it, and the first personal
    part once — when a device's Poll says it holds none: the initial model's entries at the personal
    positions, which the server's vector keeps unchanged (`Personalized.first_state`). The initial model is
    the run's seeded one (`plan.initial_params` of the workload's trainer factory and seed, as `run_config`
    starts from).
    """

    client_state = "device"
    exchanges = True  # its clients are real devices: protocol steps (secure, homomorphic aggregation) reach them

    def __init__(self, names: list[str], deadline_s: float = 300.0, poll_s: float = 5.0,
                 max_examples: dict[str, int] | None = None):
        self.names = list(names)
        self.ids = {name: i for i, name in enumerate(self.names)}
        self.deadline_s = deadline_s
        self.poll_s = poll_s
        self.rules = ReplyRules(max_examples)
        self.last_seen: dict[str, float] = {}
        self.joins: collections.Counter = collections.Counter()  # Join calls by client name
        self.refused: collections.Counter = collections.Counter()
        self.refused_by: collections.Counter = collections.Counter()  # refused messages by client name
        self.served: collections.Counter = collections.Counter()  # accepted training replies by client name
        self.uplink: dict[str, float] = {}  # by client name: its last accepted reply's bytes per second
        self._lock = threading.Condition()
        self._inbox: dict[str, collections.deque] = {name: collections.deque() for name in self.names}
        self._open: dict[int, _Assignment] = {}
        self._polls: collections.Counter = collections.Counter()  # Poll calls by client: the newest one serves
        self._arriving: set[str] = set()  # clients with an update on its way in
        self._handed: dict[str, _Assignment] = {}  # the task each client was last handed
        self._params_payload = b""
        self._personal: dict[int, tuple[Personalization, str, bytes]] = {}  # by id: (it, its wire JSON, first part)
        self._initial: np.ndarray | None = None  # the run's initial model, for first personal parts
        self._stopped = False

    # --- the Engine side, called by the round loop ---
    def start(self, workload: Workload) -> None:
        self.workload = workload
        self.trainer = workload.trainer_factory()

    def connected(self, within_s: float | None = None) -> list[int]:
        """Ids of clients heard from recently (within three poll intervals by default)."""
        horizon = time.monotonic() - (within_s or 3 * self.poll_s)
        with self._lock:
            return sorted(self.ids[n] for n, t in self.last_seen.items() if t >= horizon)

    def status(self) -> ServerStatus:
        """A snapshot for the operator (dashboard, `fedstack status`, Prometheus), taken under the lock."""
        now = time.monotonic()
        horizon = 3 * self.poll_s
        with self._lock:
            busy = {a.name for a in self._open.values()}
            rounds = [a.round for a in self._open.values()]
            clients = []
            for name in self.names:
                seen = self.last_seen.get(name)
                age = None if seen is None else round(now - seen, 3)
                # silence first: a task handed to a poll whose client then died leaves it "busy"
                state = "offline" if age is None else "lost" if age > horizon else "training" if name in busy \
                    else "connected"
                clients.append(ClientStatus(name, state, age, self.joins[name], self.served[name],
                                            self.refused_by[name], self.uplink.get(name)))
            return ServerStatus(clients, max(rounds) if rounds else None, dict(self.refused))

    def run(self, params: np.ndarray, tasks: list) -> Iterator[Outcome]:
        """Outcomes in task order: fit tasks and held-out evaluations from the clients, test-set shards
        computed here."""
        remote = [(i, t) for i, t in enumerate(tasks) if not (isinstance(t, EvalTask) and t.client_id is None)]
        if any(not isinstance(t, EvalTask) and t.config.terms for _, t in remote):
            # code objects: a device runs only the terms it ships with
            raise FedstackError("FitConfig.terms: a user's own local terms run in simulation; deployed clients "
                                "apply the built-in terms their config names (client.mu, SCAFFOLD)")
        for _, task in remote:  # each client half once, here (not in a gRPC thread): encodable, its first part
            self._prepare(personal_of(task))
        if remote:
            yield from self._run_remote(params, tasks, remote)
        else:
            for task in tasks:
                yield execute(self.trainer, self.workload, task, params)

    def _prepare(self, personal: Personalization | None) -> None:
        """Encode a personalised algorithm's client half for the wire, and the first personal part it hands
        a device that holds none (FedstackError if it cannot travel)."""
        if personal is None or id(personal) in self._personal:
            return
        wire = json.dumps(to_wire(personal))
        split, first = personal.split, b""
        if split.personal:  # Ditto's personal model starts as the global model the device receives: none sent
            if self._initial is None:
                self._initial = initial_model(self.workload)
            if self._initial.size != split.size:
                raise FedstackError(f"{type(personal).__name__} splits {split.size} values, the run's initial model "
                                    f"has {self._initial.size}")
            first = np.ascontiguousarray(self._initial[split.mask()], np.float32).tobytes()
        self._personal[id(personal)] = (personal, wire, first)

    def personal_wire(self, personal: Personalization | None) -> tuple[str, bytes]:
        """(the client half's wire JSON, the first personal part) of a prepared one; ("", b"") for none."""
        if personal is None:
            return "", b""
        return self._personal[id(personal)][1:]

    def evaluators(self, dataset) -> list[int]:
        """Federated evaluation asks the devices connected now: only they know whether they hold data."""
        return self.connected()

    def session(self, client_id: int) -> int:
        """How many times the client has joined: a new value means a new client process or connection."""
        with self._lock:
            return self.joins[self.names[client_id]]

    def _run_remote(self, params, tasks, fits) -> Iterator[Outcome]:
        outcomes = self._dispatch(fits, params)
        # Every remote task now has a result or a dropout; test-set shards run here, in order.
        for index, task in enumerate(tasks):
            yield outcomes[index] if index in outcomes else execute(self.trainer, self.workload, task, params)

    def exchange(self, round: int, stage: str, requests: dict[int, bytes]) -> dict[int, bytes]:
        """One protocol step: each client gets its request, and its reply comes back; {client id: reply}
        for the clients that answered within `deadline_s` (a silent or failing client is left out)."""
        steps = [ProtocolTask(round, int(cid), stage, bytes(request)) for cid, request in sorted(requests.items())]
        replies = {}
        for index, outcome in sorted(self._dispatch(list(enumerate(steps))).items()):
            if outcome.error is not None:
                log.warning("round %d: %s: client %d did not answer: %s", round, stage, steps[index].client_id,
                            outcome.error)
            else:
                replies[steps[index].client_id] = bytes(outcome.value.payload)
        return replies

    def _dispatch(self, items: list, params: np.ndarray | None = None) -> dict[int, Outcome]:
        """Hand out (index, task) pairs and wait up to `deadline_s`: {index: Outcome}, dropouts included."""
        started = time.monotonic()
        results: queue.Queue = queue.Queue()
        with self._lock:
            if params is not None:
                self._params_payload = np.ascontiguousarray(params, dtype=np.float32).tobytes()
            for index, task in items:
                name = self.names[task.client_id]
                # Random ids: unguessable, and never reused by a restarted server.
                assignment = _Assignment(secrets.randbits(63), index, name, round_of(task), task, results)
                self._open[assignment.task_id] = assignment
                self._inbox[name].append(assignment)
            self._lock.notify_all()
        outcomes: dict[int, Outcome] = {}
        deadline = started + self.deadline_s
        while len(outcomes) < len(items) and time.monotonic() < deadline:
            try:
                index, outcome = results.get(timeout=min(1.0, max(0.0, deadline - time.monotonic())))
                outcomes[index] = outcome
            except queue.Empty:
                self._drop_silent(outcomes)
        with self._lock:  # whatever is still open missed the deadline: a dropout
            while not results.empty():
                index, outcome = results.get_nowait()
                outcomes[index] = outcome
            for assignment in list(self._open.values()):
                if assignment.index not in outcomes:
                    outcomes[assignment.index] = Outcome(assignment.task, error=f"no answer from "
                                                         f"{assignment.name} within {self.deadline_s:g} s")
                    self._inbox[assignment.name].clear()
            self._open.clear()
        return outcomes

    def _drop_silent(self, outcomes: dict[int, Outcome]) -> None:
        """Clients silent for three heartbeat intervals while holding a task have dropped out."""
        horizon = time.monotonic() - 3 * self.poll_s
        with self._lock:
            for task_id, a in list(self._open.items()):
                if self.last_seen.get(a.name, 0.0) < horizon:
                    outcomes[a.index] = Outcome(a.task, error=f"lost contact with {a.name}")
                    del self._open[task_id]
                    log.warning("round %d: lost contact with %s", a.round, a.name)

    def stop_clients(self) -> None:
        """Tell every client the run is over (their next poll returns STOP)."""
        with self._lock:
            self._stopped = True
            self._lock.notify_all()

    def close(self) -> None:
        self.trainer = None

    # --- the service side, called from gRPC threads ---
    def joined(self, name: str) -> None:
        """A client (re)joined: a new session, whatever it was given before may be lost."""
        with self._lock:
            self.joins[name] += 1
            self.last_seen[name] = time.monotonic()

    def heartbeat(self, name: str) -> None:
        with self._lock:
            self.last_seen[name] = time.monotonic()

    def next_task(self, name: str) -> _Assignment | str | None:
        """The client's next assignment, "stop", or None after a poll interval with nothing — or at once
        when the same client polls again: one Poll per client holds a server thread, however many it opens."""
        end = time.monotonic() + self.poll_s
        with self._lock:
            self._polls[name] += 1
            mine = self._polls[name]
            self._lock.notify_all()  # the client's older poll, if any, gives way
            # Heard from now, not while the poll waits: a poll held here after its client died must not keep it
            # "connected" (an honest client polls again within one interval of this one ending).
            self.last_seen[name] = time.monotonic()
            while True:
                if self._polls[name] != mine:
                    return None
                while self._inbox[name]:
                    assignment = self._inbox[name].popleft()
                    if self._open.get(assignment.task_id) is assignment:  # not dropped while it waited
                        self._handed[name] = assignment
                        return assignment
                handed = self._handed.get(name)
                if handed is not None and self._open.get(handed.task_id) is handed:
                    # A client polls only when it holds no task: it never got this one (the stream broke
                    # midway) or lost it (restarted). Hand it out again rather than wait out the deadline.
                    log.info("round %d: %s polls while its task is open; it goes out again", handed.round, name)
                    return handed
                if self._stopped:
                    return "stop"
                left = end - time.monotonic()
                if left <= 0:
                    return None
                self._lock.wait(left)

    def received(self, task) -> bytes:
        """What a task's client receives: the params as float32 bytes, or its slice of them (`span`: CFL's
        cluster model, one of those the server stacks)."""
        span = None if isinstance(task, ProtocolTask) else task.span
        return self._params_payload if span is None else self._params_payload[4 * span[0]:4 * span[1]]

    def reply_limit(self, assignment: _Assignment) -> int:
        """The most bytes a reply to this task may announce (`ReplyRules.limit`)."""
        task = assignment.task
        if isinstance(task, EvalTask):
            return 0  # its figures travel in the header
        protected = isinstance(task, ProtocolTask) or task.protocol is not None
        return self.rules.limit(reply_size(task, len(self.received(task)) // 4),
                                None if protected else self.workload.pipeline)

    @contextlib.contextmanager
    def arriving(self, name: str):
        """While a client's reply streams in; True if another of its replies already is (then refuse it)."""
        with self._lock:
            busy = name in self._arriving
            self._arriving.add(name)
        try:
            yield busy
        finally:
            if not busy:
                with self._lock:
                    self._arriving.discard(name)

    def admit(self, name: str, header: pb.UpdateHeader) -> _Assignment | pb.SubmitReply:
        """The open task a reply's header answers, or the refusal, decided before any payload is read."""
        with self._lock:
            assignment = self._open.get(header.task_id)
        if assignment is None:
            return self.refuse(name, f"task {header.task_id} is not open (replayed, late or unknown)", "stale")
        if assignment.name != name:
            return self.refuse(name, f"task {header.task_id} belongs to another client", "foreign")
        if header.round != assignment.round:
            return self.refuse(name, f"task {header.task_id} is for round {assignment.round}, not {header.round}",
                               "stale")
        limit = self.reply_limit(assignment)
        if header.payload_bytes > limit:
            return self.refuse(name, f"announced {header.payload_bytes} bytes, over the limit of {limit} a reply "
                               f"to this task may hold", "size")
        return assignment

    def refuse(self, name: str, reason: str, kind: str) -> pb.SubmitReply:
        reason = brief(reason)
        with self._lock:
            self.refused[kind] += 1
            self.refused_by[name] += 1
        log.warning("refused an update from %s: %s", name, reason)
        return pb.SubmitReply(accepted=False, reason=reason)

    def accept(self, name: str, assignment: _Assignment, header: pb.UpdateHeader, payload: bytes,
               seconds: float = 0.0) -> pb.SubmitReply:
        """Book a client's reply to its admitted task (its payload took `seconds` to arrive): decoded and
        checked here, outside the lock."""
        task = assignment.task
        if header.error:
            outcome = Outcome(task, error=f"{name}: {brief(header.error)}")
        elif isinstance(task, ProtocolTask):  # a protocol message: the protocol checks it
            outcome = Outcome(task, FitReply(payload, 0))
        elif isinstance(task, EvalTask):
            result = self.rules.eval_reply(name, header)
            if isinstance(result, tuple):
                return self.refuse(name, result[1], result[0])
            outcome = Outcome(task, result)
        else:
            size = reply_size(task, len(self.received(task)) // 4)
            reply = self.rules.fit_reply(name, task, header, payload, size, self.workload)
            if isinstance(reply, tuple):
                return self.refuse(name, reply[1], reply[0])
            outcome = Outcome(task, reply)
        with self._lock:
            if self._open.get(header.task_id) is not assignment:
                return self.refuse(name, f"task {header.task_id} closed while its reply arrived", "stale")
            del self._open[header.task_id]
            assignment.results.put((assignment.index, outcome))
            if not isinstance(task, (ProtocolTask, EvalTask)) and not header.error:
                self.served[name] += 1
            if payload and seconds > 0:
                self.uplink[name] = len(payload) / seconds
        return pb.SubmitReply(accepted=True)


def reply_size(task, received: int) -> int:
    """The values a fit task's reply holds, for a client sent `received`: the model, or the part of it a
    personalised client sends back (IFCA: one of the k models), or coded training's parity set."""
    if isinstance(task, ProtocolTask):
        return received
    if task.config.parity is not None:
        return task.config.parity.size
    personal = task.config.personal
    return personal.sent_size(received) if personal is not None else received


def personal_of(task) -> Personalization | None:
    """The personalised algorithm's client half a fit or evaluation task carries, if any."""
    if isinstance(task, EvalTask):
        return task.personal
    return getattr(task.config, "personal", None)


def initial_model(workload: Workload) -> np.ndarray:
    """The run's initial model as `run_config` made it (seeded from the run seed), without moving the server's
    own random state."""
    from ..plan import initial_params

    try:
        import torch
    except ImportError:  # a NumPy model: its get_params is its start
        return initial_params(workload.trainer_factory, workload.seed)
    with torch.random.fork_rng(devices=[]):
        return initial_params(workload.trainer_factory, workload.seed)


def round_of(task) -> int:
    """The round a task belongs to (0 for an evaluation, which the loop runs between rounds)."""
    return 0 if isinstance(task, EvalTask) else task.round


def wire_config(config) -> str:
    """A FitConfig as the JSON a task header carries ("{}" for none); a user's own local terms are code
    and never travel; a personalised algorithm's client half travels as `to_wire` encodes it."""
    if config is None:
        return "{}"
    wire = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
            if f.name not in ("terms", "personal", "parity")}
    wire["personal"] = None if config.personal is None else to_wire(config.personal)
    if config.parity is not None:  # coded training's round 0: the device encodes its parity set
        wire["parity"] = dataclasses.asdict(config.parity)
    return json.dumps(wire)


class FederationService(pb_grpc.FederationServicer):
    """The gRPC face of a GrpcEngine: authenticates every call by its bearer token."""

    def __init__(self, engine: GrpcEngine, registry, config_toml: str, input_shape: tuple, num_classes: int):
        self.engine = engine
        self.registry = registry
        self.config_toml = config_toml
        self.input_shape, self.num_classes = list(input_shape), num_classes

    def _identify(self, context) -> str:
        token = None
        for key, value in context.invocation_metadata():
            if key == "authorization" and value.startswith("Bearer "):
                token = value[len("Bearer "):]
        import grpc

        name = self.registry.identify(token)
        if name is None:
            self.engine.refused["unauthenticated"] += 1
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "unknown or missing client token")
        # Under mutual TLS the certificate and the token must name the same client.
        common_names = context.auth_context().get("x509_common_name", [])
        if common_names and name.encode() not in common_names:
            self.engine.refused["foreign"] += 1
            context.abort(grpc.StatusCode.PERMISSION_DENIED, f"the certificate is not {name}'s")
        return name

    def Join(self, request, context):
        import grpc

        name = self._identify(context)
        if request.protocol != PROTOCOL:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"server speaks protocol {PROTOCOL}, client {request.protocol}")
        self.engine.joined(name)
        log.info("%s joined (fedstack %s)", name, request.client_version)
        return pb.JoinReply(client=name, config_toml=self.config_toml, protocol=PROTOCOL,
                            input_shape=self.input_shape, num_classes=self.num_classes,
                            heartbeat_s=self.engine.poll_s)

    def Heartbeat(self, request, context):
        self.engine.heartbeat(self._identify(context))
        return pb.Beat()

    def Poll(self, request, context):
        name = self._identify(context)
        task = self.engine.next_task(name)
        if task is None:
            yield pb.TaskChunk(header=pb.TaskHeader(kind=pb.TaskHeader.WAIT))
            return
        if task == "stop":
            yield pb.TaskChunk(header=pb.TaskHeader(kind=pb.TaskHeader.STOP))
            return
        common = dict(task_id=task.task_id, round=task.round, deadline_s=self.engine.deadline_s,
                      client_id=self.engine.ids[name])
        if isinstance(task.task, ProtocolTask):
            yield pb.TaskChunk(header=pb.TaskHeader(kind=pb.TaskHeader.PROTOCOL, protocol_stage=task.task.stage,
                                                    protocol_request=task.task.request, **common))
            return
        payload = self.engine.received(task.task)
        personal, first = self.engine.personal_wire(personal_of(task.task))
        if not request.first_personal:  # the device keeps its own personal part: only it, never the server's
            first = b""
        elif first:
            log.info("%s holds no personal part: its first (%d values) goes with task %d", name, len(first) // 4,
                     task.task_id)
        common.update(params_bytes=len(payload), personal_bytes=len(first))
        if isinstance(task.task, EvalTask):  # the client's held-out split, after fine-tuning if asked
            tuning = task.task.finetune
            yield pb.TaskChunk(header=pb.TaskHeader(kind=pb.TaskHeader.EVALUATE, fit_config_json=wire_config(tuning),
                                                    personal_json=personal, **common))
        else:
            stage, step = task.task.protocol or ("", b"")
            config = wire_config(task.task.config)
            yield pb.TaskChunk(header=pb.TaskHeader(kind=pb.TaskHeader.FIT, fit_config_json=config,
                                                    protocol_stage=stage, protocol_request=step, **common))
        for piece in chunks(payload):
            yield pb.TaskChunk(params=piece)
        for piece in chunks(first):
            yield pb.TaskChunk(personal=piece)

    def Submit(self, request_iterator, context):
        name = self._identify(context)
        self.engine.heartbeat(name)
        try:
            first = next(request_iterator)
        except StopIteration:
            return self.engine.refuse(name, "empty update stream", "malformed")
        if first.WhichOneof("part") != "header":
            return self.engine.refuse(name, "the first message of an update must be its header", "malformed")
        header = first.header
        with self.engine.arriving(name) as busy:
            if busy:
                return self.engine.refuse(name, "another reply of this client is still arriving", "busy")
            admitted = self.engine.admit(name, header)
            if isinstance(admitted, pb.SubmitReply):  # refused on its header: the payload is never read
                return admitted
            started = time.monotonic()
            try:
                payload = assemble((m.payload for m in request_iterator if m.WhichOneof("part") == "payload"),
                                   header.payload_bytes, self.engine.reply_limit(admitted))
            except ValueError as exc:
                return self.engine.refuse(name, f"malformed update: {exc}", "malformed")
            return self.engine.accept(name, admitted, header, payload, time.monotonic() - started)


# Streams one connection may hold open at once (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS): an honest client
# uses three (a poll, a reply on its way in, a heartbeat); more wait on the client's side, not the server's.
STREAMS_PER_CONNECTION = 8


def serve(service: FederationService, listen: str, *, tls_cert: bytes | None = None,
          tls_key: bytes | None = None, client_ca: bytes | None = None, workers: int = 32,
          max_calls: int = 0):
    """Start the gRPC server on `listen` (TLS when a certificate is given; mutual TLS with `client_ca`).

    `workers` threads serve calls; at most `max_calls` (default: what every connection's streams can
    hold, for `workers` of them) are in progress or queued — more are refused with RESOURCE_EXHAUSTED,
    never queued without bound — and one connection holds at most STREAMS_PER_CONNECTION of them, so a
    client flooding its own connection waits for itself instead of filling the server.
    """
    import grpc

    options = [*GRPC_OPTIONS, ("grpc.max_concurrent_streams", STREAMS_PER_CONNECTION)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=options,
                         maximum_concurrent_rpcs=max_calls or STREAMS_PER_CONNECTION * workers)
    pb_grpc.add_FederationServicer_to_server(service, server)
    if tls_cert is not None:
        credentials = grpc.ssl_server_credentials([(tls_key, tls_cert)], root_certificates=client_ca,
                                                  require_client_auth=client_ca is not None)
        port = server.add_secure_port(listen, credentials)
    else:
        port = server.add_insecure_port(listen)
    if port == 0:
        raise OSError(f"cannot listen on {listen}")
    server.start()
    return server, port


class ConnectedSampler(Sampler):
    """Each round, up to `k` clients drawn uniformly (from the run seed) among those connected, once
    `need` are (waiting up to `wait_s` seconds for them: a short outage does not use up the run)."""

    def __init__(self, engine: GrpcEngine, seed: int = 0, need: int = 1, wait_s: float = 60.0):
        self.engine, self.seed, self.need, self.wait_s = engine, seed, need, wait_s

    def sample(self, round: int, k: int, attempt: int = 0, now: float = 0.0, exclude=()) -> list[int]:
        ids = self.wait_for(self.need, self.wait_s)
        if not ids:
            return []
        keys = (round, attempt) if attempt else (round,)
        chosen = rng(self.seed, "sampling", *keys).choice(ids, size=min(k, len(ids)), replace=False)
        return sorted(int(c) for c in chosen)


    def wait_for(self, need: int, timeout_s: float) -> list[int]:
        """The connected clients once at least `need` are, or whoever is after `timeout_s` seconds: during
        a short outage a round waits for its clients instead of failing at once."""
        end = time.monotonic() + timeout_s
        ids = self.engine.connected()
        if len(ids) < need:
            log.warning("%d of the %d clients a round needs are connected: waiting up to %.0f s",
                        len(ids), need, timeout_s)
        while len(ids) < need and time.monotonic() < end:
            time.sleep(min(0.2, max(0.0, end - time.monotonic())))
            ids = self.engine.connected()
        return ids


def client_view(config, share_seed: bool = False) -> str:
    """The config a device is sent at Join: what it needs to train and encode, without the server's paths
    and, unless `share_seed`, without the run seed (a one-way function of it instead: the same for every
    device, so `--partition` partitions still fit together). The seed decides nothing a device may
    recompute against another — the deployed server's DP noise comes from the operating system —, but
    what a device need not know it is not told. `share_seed` lets trials compare a deployment with a
    simulation bit for bit (`--partition` data, codec randomness)."""
    from ..config import to_toml

    seed = config.seed
    if not share_seed:
        seed = int.from_bytes(hashlib.sha256(f"fedstack client view {config.seed}".encode()).digest()[:4], "little")
    from ..coded import map_seed_of

    view = config.model_copy(update={
        "seed": seed,
        # coded training's feature map is every party's: the devices get its seed, not the run's
        "coded": config.coded.model_copy(update={"map_seed": map_seed_of(config.coded.map_seed, config.seed)}),
        "data": config.data.model_copy(update={"path": ""}),
        "codec": config.codec.model_copy(update={"ckks_keys": ""}),
        "systems": config.systems.model_copy(update={"trace": ""}),
        "engine": config.engine.model_copy(update={"address": ""}),
    })
    return to_toml(view)
