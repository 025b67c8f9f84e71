"""A server process for test_big_model.py: one task with a 100 MB global vector, then it checks the answer."""

import sys
import time

import numpy as np

from fedstack.client import FitConfig
from fedstack.codec import Pipeline
from fedstack.config import to_toml, validate
from fedstack.engine import Workload
from fedstack.strategy import Task
from fedstack.transport.security import ClientRegistry
from fedstack.transport.server import FederationService, GrpcEngine, serve

SIZE = 25_000_000  # float32: 100 MB


class Unused:
    """No evaluation happens here; the engine still wants a trainer factory."""


if __name__ == "__main__":
    registry = ClientRegistry.load(sys.argv[1])
    engine = GrpcEngine(registry.names, deadline_s=120)
    server, port = serve(FederationService(engine, registry, to_toml(validate({})), (1,), 1), "127.0.0.1:0")
    print(f"listening on 127.0.0.1:{port}", flush=True)
    engine.start(Workload(Unused, None, Pipeline(), 0))
    params = np.arange(SIZE, dtype=np.float32)
    while not engine.connected():
        time.sleep(0.05)
    outcome = next(engine.run(params, [Task(1, 0, FitConfig())]))
    update = np.frombuffer(outcome.value.payload, np.float32)
    print("match" if np.array_equal(update, -params) else f"mismatch {outcome.error}", flush=True)
    engine.stop_clients()
    server.stop(grace=1).wait()
