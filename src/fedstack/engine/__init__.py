"""Where client tasks run: in-process, on a process pool (and later Ray and remote devices)."""

from .base import Engine, EvalTask, FitReply, Outcome, Workload, execute
from .local import LocalEngine
from .pool import PoolEngine

ENGINES = {"local": LocalEngine, "pool": PoolEngine}


def make_engine(name: str, workers: int = 0) -> Engine:
    """An engine by its config name (`engine.name`)."""
    if name == "local":
        return LocalEngine()
    if name == "pool":
        return PoolEngine(workers)
    raise ValueError(f"unknown engine {name!r} ({' | '.join(ENGINES)})")


__all__ = ["Engine", "EvalTask", "FitReply", "Outcome", "Workload", "execute",
           "LocalEngine", "PoolEngine", "ENGINES", "make_engine"]
