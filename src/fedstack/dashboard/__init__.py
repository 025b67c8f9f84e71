"""The live dashboard of federated runs: `fedstack run --dashboard`, `fedstack dashboard RUN_DIR ...`."""

from .server import Dashboard, RunFeed

__all__ = ["Dashboard", "RunFeed"]
