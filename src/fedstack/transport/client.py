"""The device side: a client process that joins a server, trains on its own files, sends updates."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
import random
import threading
import time
import tomllib
from pathlib import Path

import numpy as np

from ..client import FitConfig, Task, Trainer
from ..codec import CodecContext, build_pipeline
from ..config import validate
from ..data import ClientData
from ..engine.base import evaluate_held_out, fit_and_encode
from ..errors import DataError, FedstackError, brief
from ..personal import STATE_KEY, Personalization, first_personal, from_wire
from ..version import __version__
from . import PROTOCOL
from . import fedstack_pb2 as pb
from . import fedstack_pb2_grpc as pb_grpc
from .replies import eval_figures
from .wire import GRPC_OPTIONS, assemble_parts, chunks

log = logging.getLogger("fedstack.client")


def load_local_data(path: str | Path, label_column: str = "label", task: str = "classification") -> ClientData:
    """A client's own data: an .npz with arrays `x` and `y` (and, for federated evaluation, its held-out
    `x_test` and `y_test`), or a CSV with a label column. Targets are class labels, or real values when
    the run's `task` is a regression."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"client data not found: {path}")
    target = np.float32 if task == "regression" else np.int64
    held = 0
    if path.suffix == ".npz":
        with np.load(path) as f:
            if "x" not in f or "y" not in f:
                raise DataError(f"{path}: an .npz needs arrays 'x' and 'y', found {sorted(f.files)}")
            x, y = f["x"].astype(np.float32), f["y"].astype(target)
            if ("x_test" in f) != ("y_test" in f) or ("x_test" in f and len(f["x_test"]) != len(f["y_test"])):
                raise DataError(f"{path}: held-out data needs arrays 'x_test' and 'y_test' of the same length")
            if "x_test" in f:
                held = len(f["y_test"])
                x = np.concatenate([x, f["x_test"].astype(np.float32)])
                y = np.concatenate([y, f["y_test"].astype(target)])
    elif path.suffix == ".csv":
        header = path.read_text().splitlines()[0].split(",")
        if label_column not in header:
            raise DataError(f"{path}: no column '{label_column}' (columns: {', '.join(header)})")
        table = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float64, ndmin=2)
        col = header.index(label_column)
        y = table[:, col].astype(target)
        x = np.delete(table, col, axis=1).astype(np.float32)
    else:
        raise DataError(f"{path}: client data must be .npz (x, y) or .csv with a '{label_column}' column")
    if len(x) != len(y):
        raise DataError(f"{path}: {len(x)} samples but {len(y)} labels")
    return ClientData(x, y, np.arange(len(y) - held), np.arange(len(y) - held, len(y)))


def fit_to_model(data: ClientData, input_shape: tuple[int, ...], num_classes: int, source: str) -> ClientData:
    """`data` as the server's model takes it; FedstackError, on one line naming both shapes, if it cannot be.

    Examples must have the model's `input_shape`, or be flat vectors of as many values (a CSV's rows: they are
    reshaped in C order); labels must lie in [0, num_classes). Checked at join: a client whose data cannot fit
    would otherwise fail every task of the run."""
    shape, want = tuple(data.x.shape[1:]), tuple(input_shape)
    if want and shape != want:
        if len(shape) == 1 and shape[0] == math.prod(want):
            data = dataclasses.replace(data, x=data.x.reshape(len(data.x), *want))
        else:
            raise FedstackError(f"{source}: examples of shape {shape}, the server's model takes {want}")
    if num_classes and len(data.y):
        low, high = int(data.y.min()), int(data.y.max())
        if low < 0 or high >= num_classes:
            raise FedstackError(f"{source}: labels {low}..{high}, the server's model has {num_classes} classes "
                                f"(labels 0..{num_classes - 1})")
    return data


def tls_refusal(server: str, ca: bytes | None, cert: bytes | None, key: bytes | None,
                timeout_s: float = 3.0) -> str | None:
    """Why the server's TLS turns this client away, when a handshake of our own shows it; None otherwise (the
    server down or unreachable, or nothing wrong with TLS).

    gRPC says only "Socket closed" (UNAVAILABLE) when a mutual-TLS server refuses a client, as it does for any
    outage. The tell: the handshake with the server's certificate succeeds, the server asks for a client
    certificate, then closes the connection before saying a word of HTTP/2 (a server that accepts us sends its
    SETTINGS at once)."""
    import socket
    import ssl
    import tempfile

    host, _, port = server.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit():
        return None
    try:
        context = ssl.create_default_context(cadata=ca.decode("ascii") if ca else None)
    except (ssl.SSLError, ValueError):
        return None
    context.set_alpn_protocols(["h2"])
    context.verify_flags &= ~ssl.VERIFY_X509_STRICT  # as gRPC checks (Python 3.13 turns strict checks on)
    # Whether the server sent a CertificateRequest (handshake message 13), where CPython lets us watch the
    # handshake (SSLContext._msg_callback); without it, the close alone tells.
    asked = []
    with contextlib.suppress(AttributeError, TypeError):
        context._msg_callback = lambda conn, direction, version, content, message, data: asked.append(
            direction == "read" and content == 22 and message == 13)
    with tempfile.TemporaryDirectory() as tmp:  # the ssl module loads a key pair from files only (mode 0700)
        if cert and key:
            Path(tmp, "cert.pem").write_bytes(cert)
            Path(tmp, "key.pem").write_bytes(key)
            try:
                context.load_cert_chain(Path(tmp, "cert.pem"), Path(tmp, "key.pem"))
            except (ssl.SSLError, ValueError):
                return None
        try:
            with socket.create_connection((host, int(port)), timeout=timeout_s) as raw, \
                    context.wrap_socket(raw, server_hostname=host) as tls:
                tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
                closed = not tls.recv(64)
        except ssl.SSLCertVerificationError as exc:
            return f"the server's certificate does not verify against --ca: {exc.verify_message}"
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError, ConnectionResetError, BrokenPipeError):
            closed = True
        except ssl.SSLError as exc:  # an alert (TLS 1.2, or a server that says why): certificate ones only
            closed = "CERTIFICATE" in str(exc.reason).upper() or "UNKNOWN_CA" in str(exc.reason).upper()
        except OSError:  # refused, unreachable, timed out: not a TLS matter
            return None
    if not closed or (asked and not any(asked)):
        return None
    if not cert:
        return "the server requires a client certificate: pass --cert and --key"
    return ("the server refused this client's certificate (--cert): not signed by the CA it trusts, expired, "
            "or not a client certificate")


# What `fedstack client --require` can pin: the protections a device insists on, whatever the server's config.
PINS = ("secagg", "ckks", "dp")


class PinError(FedstackError):
    """The server asked for something a pin (--require, --ckks-public) forbids: the client stops (exit 2)."""


class TaskRefused(FedstackError):
    """A task this device cannot take as sent — a personalised algorithm's client half of an unknown kind or
    malformed fields, or one that does not fit its model or its state: it tells the server, then stops (exit 2)."""


def pins(require, ckks_public: str | None = None, key_holder=None) -> tuple[frozenset[str], bytes | None]:
    """(the pinned protections, the pinned CKKS key id) of `--require` values (each one name or a comma-separated
    list), `--ckks-public FILE` (which implies ckks) and the key holder's secret key; FedstackError if unusable.

    `--require ckks` needs a key to pin: `--ckks-public` or `--ckks-secret` (the key holder knows its own pair).
    Without one, an active server could hand out a public key whose secret key it holds itself.
    """
    names = {name.strip() for value in require for name in str(value).split(",") if name.strip()}
    unknown = sorted(names - set(PINS))
    if unknown:
        raise FedstackError(f"--require {', '.join(unknown)}: unknown (choose from {', '.join(PINS)})")
    key_id = None
    if ckks_public:
        from .. import he

        try:
            key_id = he.key_id(he.read_public(ckks_public))
        except (OSError, ValueError) as exc:
            raise FedstackError(f"--ckks-public {ckks_public}: not a CKKS public key ({exc})") from None
        if key_holder is not None and key_holder.key_id != key_id:
            raise FedstackError(f"--ckks-public {ckks_public} is key pair {key_id.hex()}, --ckks-secret is "
                                f"{key_holder.key_id.hex()}")
        names.add("ckks")
    if "ckks" in names and key_id is None and key_holder is None:
        raise FedstackError("--require ckks needs --ckks-public FILE (the run's ckks_public.bin): without it the "
                            "server could hand out a key of its own and read every update")
    return frozenset(names), key_id


def dp_by_clients(config) -> str | None:
    """How a run's updates are made differentially private before they leave the device: "gaussian" (clip, then
    the device's own noise: privacy.mode local or distributed; client-level DP, fixed in the pipeline built at
    join), "dp-sgd" (client.dp_sgd with noise; record-level DP, which each task's config must keep), or None.
    Central DP (privacy.mode = "central") is None: there the server adds the noise, after seeing the updates."""
    p, pipeline = config.privacy, config.codec.pipeline
    if p.mode in ("local", "distributed") and p.noise_multiplier > 0 and pipeline[:2] == ["clip", "gaussian"]:
        return "gaussian"
    if config.client.dp_sgd and config.client.dp_noise_multiplier > 0:
        return "dp-sgd"
    return None


def check_pins(config, require) -> None:
    """PinError, on one line naming what the server's config lacks, unless it meets every pin in `require`."""
    pipeline, lacks = config.codec.pipeline, []
    for name in ("secagg", "ckks"):
        if name in require and pipeline[-1:] != [name]:
            lacks.append(f"--require {name}: the server's codec.pipeline {pipeline} has no \"{name}\" stage "
                         f"(updates would leave {'unmasked' if name == 'secagg' else 'unencrypted'})")
    if "dp" in require and dp_by_clients(config) is None:
        p = config.privacy
        what = "only central DP (privacy.mode = \"central\": the server adds the noise, after seeing each " \
            "update)" if p.mode == "central" and p.noise_multiplier > 0 else "no DP noise added on the device"
        lacks.append(f"--require dp: the server's config has {what}; the device needs \"clip\" then \"gaussian\" "
                     "in codec.pipeline with privacy.mode local or distributed and privacy.noise_multiplier > 0, "
                     "or client.dp_sgd with client.dp_noise_multiplier > 0")
    if lacks:
        raise PinError("; ".join(lacks))


@contextlib.contextmanager
def heartbeats(stub, metadata, every_s: float, rpc_error: type):
    """Heartbeats in the background while the body trains, so the server knows the device is alive."""
    stop = threading.Event()

    def beat():
        while not stop.wait(every_s):
            try:
                stub.Heartbeat(pb.Beat(), metadata=metadata, timeout=every_s)
            except rpc_error:
                pass  # the main loop notices a lost server when it submits

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@dataclasses.dataclass(frozen=True)
class TlsSettings:
    """How a client's channel to the server is secured: TLS, or plaintext with `insecure` (tests only).

    `ca` is the PEM of the CA that signed the server's certificate (None: the system's roots); `cert` and `key`,
    this client's certificate and private key, for servers that ask for mutual TLS.
    """

    ca: bytes | None = None
    cert: bytes | None = None
    key: bytes | None = None
    insecure: bool = False


class Client:
    """Joins a server, then polls for tasks, trains, and submits, reconnecting with backoff when cut off."""

    def __init__(self, server: str, token: str, *, tls: TlsSettings = TlsSettings(), data: str | None = None,
                 partition: int | None = None, max_backoff_s: float = 30.0, trainer=None,
                 state_path: str | None = None, ckks_secret: str | None = None, require=(),
                 ckks_public: str | None = None, min_members: int = 2):
        import grpc

        if trainer is None:
            try:
                import torch
            except ImportError:  # fedstack without the torch extra: the run's model is a NumPy one, or it says so
                pass
            else:
                torch.set_num_threads(1)  # the same kernels as every engine, so the same bits
        self.grpc = grpc
        # The handshake's inputs, to say why when the server's TLS refuses us (None: plaintext).
        self.tls_handshake = None if tls.insecure else (server, tls.ca, tls.cert, tls.key)
        if tls.insecure:
            self.channel = grpc.insecure_channel(server, options=GRPC_OPTIONS)
        else:
            creds = grpc.ssl_channel_credentials(root_certificates=tls.ca, private_key=tls.key,
                                                 certificate_chain=tls.cert)
            self.channel = grpc.secure_channel(server, creds, options=GRPC_OPTIONS)
        self.stub = pb_grpc.FederationStub(self.channel)
        self.metadata = (("authorization", f"Bearer {token}"),)
        self.data_path, self.partition = data, partition
        self.max_backoff_s = max_backoff_s
        self.trainer = trainer  # None: the model the run's config names
        self.submitted = self.refused = 0  # updates (fit replies); protocol replies count only when refused
        self.failed = self.tasks = 0  # fit tasks that failed here (reported to the server as errors), of all run
        self.data = None
        self.summing = None  # the run's summing stage (secagg, ckks): then no update ever leaves in the clear
        self.secagg = None  # this device's side of secure aggregation (secagg.remote.SecAggDevice)
        self.ckks = None  # this device's side of homomorphic aggregation (codec.ckks.CKKSDevice)
        # The key holder of homomorphic aggregation: the one device that can decrypt the aggregate.
        self.key_holder = None
        if ckks_secret:
            from .. import he

            try:
                self.key_holder = he.read_secret(ckks_secret)
            except (OSError, ValueError) as exc:
                raise FedstackError(f"--ckks-secret {ckks_secret}: not a CKKS secret key ({exc})") from None
        self.require, self.ckks_key_id = pins(require, ckks_public, self.key_holder)
        if not min_members >= 1:
            raise FedstackError(f"--min-members must be at least 1, got {min_members}")
        self.min_members = min_members
        # This device's client state (SCAFFOLD's control variate, a personalised algorithm's personal part),
        # kept across rounds; with a state file also across restarts of the client process.
        self.state_path = Path(state_path) if state_path else None
        self.state: dict[str, np.ndarray] = {}
        if self.state_path is not None and self.state_path.exists():
            try:
                with np.load(self.state_path, allow_pickle=False) as saved:
                    self.state = {k: saved[k] for k in saved.files}
            except (OSError, ValueError) as exc:
                raise FedstackError(f"--state {self.state_path}: not a saved client state ({exc})") from None

    def join(self) -> None:
        """Say hello; on the first join, build the model and load the data the run's config asks for."""
        reply = self.stub.Join(pb.Hello(protocol=PROTOCOL, client_version=__version__),
                               metadata=self.metadata, timeout=30)
        self.name = reply.client
        self.heartbeat_s = reply.heartbeat_s or 5.0
        tree = tomllib.loads(reply.config_toml)
        # codec.ckks_keys names a directory on the server's machine: a device gets the public context
        # from the server (and the key holder its secret key from --ckks-secret).
        tree.get("codec", {}).pop("ckks_keys", None)
        config = validate(tree)
        # The pins (--require) hold at every join: a restarted server's config must meet them too. (The
        # pipeline is built once, at the first join; a rejoin never rebuilds it from the new config.)
        check_pins(config, self.require)
        if self.data is None:
            from ..plan import codec_options, trainer_factory

            self.config = config
            self.data = fit_to_model(self._load_data(), tuple(reply.input_shape), reply.num_classes,
                                     f"--data {self.data_path}" if self.data_path else f"--partition {self.partition}")
            self.trainer = self.trainer or trainer_factory(self.config, tuple(reply.input_shape), reply.num_classes)()
            pipeline = build_pipeline(self.config.codec.pipeline, codec_options(self.config, deployed=True))
            # A summing stage (secagg, ckks) is a protocol with the server, not an encoding: the device applies
            # the stages before it and masks or encrypts the result when the server asks.
            self.pipeline, self.summing = pipeline.before_summing(), pipeline.summing
            summing = self.summing.name if self.summing is not None else None
            if summing == "secagg":
                from ..secagg.remote import SecAggDevice

                self.secagg = SecAggDevice(self.summing)
            if summing == "ckks":
                from ..codec.ckks import CKKSDevice

                # the key holder decrypts only sums of at least --min-members, and of the run's min_clients
                self.ckks = CKKSDevice(self.key_holder, key_id=self.ckks_key_id,
                                       min_members=max(self.min_members, self.config.server.min_clients))
            if isinstance(self.trainer, Trainer):  # DP noise, parity encodings: secrets no other party can recompute
                self.trainer.on_device()
        log.info("joined as %s", self.name)

    def _load_data(self) -> ClientData:
        if self.data_path:
            return load_local_data(self.data_path, task=self.config.model.task)
        if self.partition is None:
            raise FedstackError("a client needs --data FILE or --partition ID")
        from ..plan import dataset_of

        dataset = dataset_of(self.config)
        if not 0 <= self.partition < dataset.num_clients:
            raise FedstackError(f"--partition {self.partition}: the run has {dataset.num_clients} partitions")
        return dataset.client(self.partition)

    def run(self) -> None:
        """Work until the server says the run is over; survive server restarts and network cuts."""
        backoff = 0.5
        joined = False
        while True:
            try:
                if not joined:
                    self.join()
                    joined, backoff = True, 0.5
                if not self.poll_once():
                    return
            except self.grpc.RpcError as err:
                code = err.code()
                if code in (self.grpc.StatusCode.UNAUTHENTICATED, self.grpc.StatusCode.FAILED_PRECONDITION,
                            self.grpc.StatusCode.PERMISSION_DENIED):
                    raise FedstackError(f"server refused this client: {err.details()}") from None
                if not joined and code == self.grpc.StatusCode.UNAVAILABLE and self.tls_handshake is not None:
                    # a TLS refusal looks like an outage to gRPC: a handshake of our own tells them apart
                    reason = tls_refusal(*self.tls_handshake)
                    if reason is not None:
                        raise FedstackError(reason) from None
                joined = False
                delay = random.uniform(0, backoff)  # full jitter, so clients do not return in lockstep
                log.warning("server unreachable (%s); retrying in %.1f s", code.name, delay)
                time.sleep(delay)
                backoff = min(backoff * 2, self.max_backoff_s)

    @functools.cached_property
    def model_size(self) -> int:
        """How many values this device's model has: what bounds a personalised task's split and first part."""
        return int(self.trainer.get_params().size)

    def _evaluate(self, header, params: np.ndarray, first: np.ndarray) -> None:
        """Judge the global model — or, under a personalised algorithm, this device's own model — on its
        held-out data (none: zero examples) and report the sums."""
        update = pb.UpdateHeader(task_id=header.task_id, round=header.round)
        violated = None
        with heartbeats(self.stub, self.metadata, self.heartbeat_s, self.grpc.RpcError):
            try:
                tuning = json.loads(header.fit_config_json or "{}")
                personal = self._personal(header.personal_json, len(params)) if header.personal_json else None
                state = self._with_personal(personal, params, first) if personal is not None else None
                result = evaluate_held_out(self.trainer, self.data, params, FitConfig(**tuning) if tuning else None,
                                           personal, state)
                update.num_examples = result.examples
                update.metrics.update(eval_figures(result))
            except TaskRefused as exc:  # the server learns why; the device stops (exit 2)
                update.error, violated = f"{type(exc).__name__}: {exc}", exc
            except Exception as exc:  # the server counts a failed evaluation; the device keeps working
                update.error = f"{type(exc).__name__}: {exc}"
                log.warning("evaluation failed: %s", update.error)
        self._submit(header, update, b"", "evaluation")
        if violated is not None:
            raise violated

    def _personal(self, wire, received: int) -> Personalization:
        """A personalised task's client half (its wire JSON, or the object `json.loads` made of it), checked
        against this device's model and what it received: TaskRefused, naming the key at fault, otherwise."""
        try:
            personal = from_wire(json.loads(wire) if isinstance(wire, str) else wire, max(self.model_size, received))
        except (FedstackError, ValueError) as exc:  # ValueError: not JSON
            raise TaskRefused(f"the server's task: {brief(str(exc))}") from None
        split = personal.split
        if split.size not in (self.model_size, received) or split.shared_size != received:
            raise TaskRefused(f"the server's task: personal.size {split.size} with {split.shared_size} shared values "
                              f"does not fit this device's model of {self.model_size} values and the {received} sent")
        return personal

    def _with_personal(self, personal: Personalization, params: np.ndarray, first: np.ndarray) -> dict:
        """This device's state for a personalised task: it holds its own personal part — or, holding none yet,
        takes the first one (`first_personal`: what the server sent, Ditto's the global model received) and
        keeps it from now on (in its --state file with its next accepted update)."""
        split = personal.split
        count = split.size - split.shared_size
        if STATE_KEY not in self.state:
            if len(first) != count:
                raise TaskRefused(f"the server sent a first personal part of {len(first)} values; "
                                  f"{type(personal).__name__} keeps {count} on this device")
            self.state = {**self.state, STATE_KEY: first_personal(personal, params, split.join(params, first))}
            return self.state
        expected = first_personal(personal, params, split.join(params, np.zeros(count, np.float32))).size
        have = self.state[STATE_KEY].size
        if expected and have != expected:  # a state file of another run, or of another model
            raise TaskRefused(f"--state {self.state_path}: its personal part has {have} values, the run's "
                              f"{type(personal).__name__} keeps {expected}")
        return self.state

    def _save_state(self) -> None:
        if self.state_path is None:
            return
        from io import BytesIO

        from ..files import write_atomic

        buffer = BytesIO()
        np.savez(buffer, **self.state)
        # Never a half-written state, even after a power cut; derived from this device's data: owner-only.
        write_atomic(self.state_path, buffer.getvalue(), private=True)

    def poll_once(self) -> bool:
        """Ask for work and do it; False when the run is over."""
        # Holding no personal part, the device asks for its first (sent only under a personalised algorithm).
        stream = self.stub.Poll(pb.PollRequest(first_personal=STATE_KEY not in self.state), metadata=self.metadata,
                                timeout=120)
        first = next(stream)
        header = first.header
        if header.kind == pb.TaskHeader.STOP:
            return False
        if header.kind == pb.TaskHeader.WAIT:
            return True
        if header.kind == pb.TaskHeader.PROTOCOL:
            self._answer(header)
            return True
        if header.personal_bytes and (header.personal_bytes > 4 * self.model_size or header.personal_bytes % 4):
            raise TaskRefused(f"the server announces a first personal part of {header.personal_bytes} bytes; this "
                              f"device's model is {4 * self.model_size} bytes")
        parts = assemble_parts(stream, {"params": header.params_bytes, "personal": header.personal_bytes})
        params = np.frombuffer(parts["params"], dtype=np.float32)
        first = np.frombuffer(parts["personal"], dtype=np.float32)
        if header.kind == pb.TaskHeader.EVALUATE:
            self._evaluate(header, params, first)
            return True
        update = pb.UpdateHeader(task_id=header.task_id, round=header.round)
        payload, reply, violated = b"", None, None
        with heartbeats(self.stub, self.metadata, self.heartbeat_s, self.grpc.RpcError):
            try:
                tree = json.loads(header.fit_config_json)
                personal = tree.pop("personal", None)
                personal = self._personal(personal, len(params)) if personal is not None else None
                parity = tree.pop("parity", None)
                if parity is not None:  # coded training's round 0 (fedstack.coded): checked before it is built
                    from ..coded import ParityRequest

                    tree["parity"] = ParityRequest.from_wire(parity)
                config = FitConfig(**tree, personal=personal)
                self._check_task(config)
                state = self._with_personal(personal, params, first) if personal is not None else self.state
                task = Task(header.round, header.client_id, config, state=state)
                reply = fit_and_encode(self.trainer, self.pipeline, self.config.seed, task, self.data, params)
                payload = self._masked(header, task, reply.payload) if self.summing else reply.payload
                update.num_examples = reply.num_examples
                update.metrics.update({k: float(v) for k, v in reply.metrics.items()})
            except TaskRefused as exc:  # the server learns why; the device stops (exit 2)
                update.error, violated = f"{type(exc).__name__}: {exc}", exc
            except Exception as exc:  # report the failure instead of vanishing: the server counts it
                update.error = f"{type(exc).__name__}: {exc}"
                violated = exc if isinstance(exc, PinError) else None
                self.failed += 1
                log.warning("round %d: training failed: %s", header.round, update.error,
                            exc_info=log.isEnabledFor(logging.DEBUG))
        self.tasks += 1
        if self._submit(header, update, payload, "update") and not update.error:  # an error report is no update
            self.submitted += 1
            if reply is not None and reply.state is not None:  # the server took it: the state moves on
                self.state = reply.state
                self._save_state()
        if violated is not None:  # the server learnt why; the device stops (exit 2)
            raise FedstackError(str(violated))
        return True

    def _check_task(self, config: FitConfig) -> None:
        """A fit task must keep what `--require dp` accepted at join: a server cannot turn DP-SGD off, or
        lower its noise, per task (PinError). The clip and gaussian stages are this device's pipeline's."""
        if "dp" in self.require and dp_by_clients(self.config) == "dp-sgd":
            floor = self.config.client.dp_noise_multiplier
            if not config.dp_sgd or not config.dp_noise_multiplier >= floor:
                raise PinError(f"--require dp: the server's task asks for dp_sgd={config.dp_sgd} with noise "
                               f"multiplier {config.dp_noise_multiplier:g}, below the run's DP-SGD "
                               f"(noise multiplier {floor:g}) accepted at join: refusing to train")

    def _masked(self, header, task: Task, payload: bytes) -> bytes:
        """This device's update protected for the round's sum: masked (secagg: a MaskedInput's bytes) or
        encrypted (ckks: a CKKS payload), as the server's request on the fit task asks."""
        from ..codec.ckks import ENCRYPT
        from ..secagg.remote import MASKED_INPUT

        stage = header.protocol_stage
        masking = self.secagg is not None and stage == MASKED_INPUT
        encrypting = self.ckks is not None and stage == ENCRYPT
        if not (masking or encrypting):  # never in the clear under a sum
            raise FedstackError(f"the run aggregates with {self.summing.name!r}, but the server asked for "
                                f"{stage or 'a plain update'!r}: refusing to send an unmasked update")
        ctx = CodecContext(task.round, task.client_id, self.config.seed, task.config.clip_norm)
        vector = self.pipeline.decode(payload, ctx)  # exactly what the server would have decoded in simulation
        if encrypting:
            return self.ckks.encrypt(header.protocol_request, vector)
        return self.secagg.mask(header.round, header.client_id, header.protocol_request, vector)

    def _answer(self, header) -> None:
        """One step of a protocol the server runs with the round's clients (secure or homomorphic aggregation)."""
        update = pb.UpdateHeader(task_id=header.task_id, round=header.round)
        payload, violated = b"", None
        device = {"secagg": self.secagg, "ckks": self.ckks}.get(header.protocol_stage.split(".")[0])
        with heartbeats(self.stub, self.metadata, self.heartbeat_s, self.grpc.RpcError):
            try:
                if device is None:
                    raise FedstackError(f"protocol step {header.protocol_stage!r}, but the run has no such "
                                        "aggregation")
                payload = device.answer(header.round, header.client_id, header.protocol_stage,
                                        header.protocol_request)
            except Exception as exc:  # the server counts this client out of the step; the protocol copes
                from ..codec.ckks import KeyPinError

                update.error = f"{type(exc).__name__}: {exc}"
                violated = exc if isinstance(exc, KeyPinError) else None
                if violated is None:
                    log.warning("round %d: %s failed: %s", header.round, header.protocol_stage, update.error)
        self._submit(header, update, payload, header.protocol_stage)
        if violated is not None:  # a public key other than the pinned one: the server learnt why; stop (exit 2)
            raise FedstackError(str(violated))

    def _submit(self, header, update, payload: bytes, what: str) -> bool:
        """Send a reply (update or protocol message) in chunks; whether the server accepted it."""
        update.payload_bytes = len(payload)
        messages = [pb.UpdateChunk(header=update), *(pb.UpdateChunk(payload=p) for p in chunks(payload))]
        answer = self.stub.Submit(iter(messages), metadata=self.metadata, timeout=120)
        if not answer.accepted:
            self.refused += 1
            log.warning("round %d: server refused the %s: %s", header.round, what, answer.reason)
        return answer.accepted
