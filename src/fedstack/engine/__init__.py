"""Where client tasks run: in-process, on a process pool, on Ray (and remote devices, in transport)."""

from .base import Engine, EvalTask, FitReply, Outcome, Workload, execute
from .local import LocalEngine
from .pool import PoolEngine
from .ray import RayEngine  # imports Ray only when it starts

ENGINES = {"local": LocalEngine, "pool": PoolEngine, "ray": RayEngine}


def make_engine(name: str, workers: int = 0, address: str = "") -> Engine:
    """An engine by its config name (`engine.name`); `address` is the Ray cluster's (`engine.address`)."""
    if address and name != "ray":
        raise ValueError(f"an address is for engine \"ray\", not {name!r}")
    if name == "local":
        return LocalEngine()
    if name == "pool":
        return PoolEngine(workers)
    if name == "ray":
        return RayEngine(workers, address)
    raise ValueError(f"unknown engine {name!r} ({' | '.join(ENGINES)})")


__all__ = ["Engine", "EvalTask", "FitReply", "Outcome", "Workload", "execute",
           "LocalEngine", "PoolEngine", "RayEngine", "ENGINES", "make_engine"]
