"""A run's directory and what it records: the `History` a run returns, the directory's creation, and
the figures of summary.json. Shared by every loop (rounds, gossip) without importing any of them."""

from __future__ import annotations

import datetime as dt
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import FedstackError
from .version import __version__


@dataclass
class History:
    """What a simulation produced: one record per round and the final parameters."""

    rounds: list[dict] = field(default_factory=list)
    params: np.ndarray | None = None
    run_dir: Path | None = None
    status: str = "finished"
    stopped: str | None = None  # why a run ended early (the privacy budget)
    profile: dict | None = None  # where the time went, with `profile` (fedstack.profiling.Profile)
    trainer_factory: Callable | None = field(default=None, repr=False)  # what trained it (simulate sets it)
    # Personalised and clustered training (a simulation's: deployed, they stay on the devices): each client's
    # own model's parameters, the model its held-out split judges (FedPer: the global body with its head;
    # Ditto: v_k; IFCA, CFL: its cluster's model), and under clustered training each client's cluster.
    personal: dict[int, np.ndarray] = field(default_factory=dict, repr=False)
    clusters: dict[int, int] = field(default_factory=dict)

    def __call__(self, record: dict, params=None) -> None:
        self.rounds.append(record)

    def model(self):
        """The trained model: a torch.nn.Module holding the final parameters, in evaluation mode."""
        trainer = self.trainer_factory() if self.trainer_factory is not None else None
        if trainer is None or self.params is None or not _holds_module(trainer):
            raise FedstackError("History.model() needs a finished run trained by a TorchTrainer")
        trainer.set_params(self.params)
        return trainer.model.eval()

    def contributions(self, method: str | None = None) -> dict[int, float]:
        """Each client's contribution accumulated over the run by `method` (default: the first the run scored
        with), from the rounds' `contribution` figures; {} for a run without contribution scores."""
        from .contribution import accumulate

        totals = accumulate(self.rounds)
        if method is None:
            return next(iter(totals.values()), {})
        if method not in totals:
            have = ", ".join(totals) or "none"
            raise FedstackError(f"this run has no {method!r} contribution scores (it has: {have})")
        return totals[method]

    def to_pandas(self):
        """One row per round, nested figures as dotted columns (failures_by_kind.dropout, ...)."""
        from .extras import require

        return require("pandas", "analysis", "History.to_pandas()").json_normalize(self.rounds)


def _holds_module(trainer) -> bool:
    """Whether a trainer holds a torch module (TorchTrainer)."""
    from .client import TorchTrainer

    return isinstance(trainer, TorchTrainer)


def summarize(history: History, seed: int, config: dict, deployed: bool = False) -> dict:
    """The figures of summary.json (`deployed`: the clients were real devices, so there is no simulated time)."""
    rounds = history.rounds
    last = rounds[-1] if rounds else {}
    accuracies = [r["test_accuracy"] for r in rounds if r.get("test_accuracy") is not None]
    federated = next((r["federated"] for r in reversed(rounds) if r.get("federated")), None)
    personalized = next((r["personalized"] for r in reversed(rounds) if r.get("personalized")), None)
    personal = next((r["personal"] for r in reversed(rounds) if r.get("personal")), None)
    local_only = next((r["local_only"] for r in reversed(rounds) if r.get("local_only")), None)
    parity = next(({"bytes_up": r["parity_bytes_up"], "clients": r["parity_clients"],
                    "rows_per_client": r["parity_rows"],
                    "refused": r["parity_refused"]} for r in rounds if "parity_bytes_up" in r), None)
    summary = {
        "run_dir": str(history.run_dir),
        "status": history.status,
        "stopped": history.stopped,
        "rounds": len(rounds),
        "final": {
            "test_accuracy": last.get("test_accuracy"), "test_loss": last.get("test_loss"),
            "test_top3_accuracy": last.get("test_top3_accuracy"),
            "wall_time_s": last.get("wall_time_s"), "sim_time_s": last.get("sim_time_s"),
            "bytes_up_total": sum(r["bytes_up"] for r in rounds),
            "bytes_down_total": sum(r["bytes_down"] for r in rounds),
            # float32 bytes of the same messages / bytes sent: how much the codecs saved
            "compression_up": _ratio(sum(r.get("bytes_up_raw", 0) for r in rounds), sum(r["bytes_up"] for r in rounds)),
            "compression_down": _ratio(sum(r.get("bytes_down_raw", 0) for r in rounds),
                                       sum(r["bytes_down"] for r in rounds)),
            "failures_total": sum(r["failures"] for r in rounds),
            "failures_by_kind": _kinds(rounds),
            "rejected_by_reason": _kinds(rounds, "rejected_by_reason"),
            "federated": federated,
            "personalized": personalized,  # the global model fine-tuned on each client (eval.finetune_steps)
            "personal": personal,  # each client's own model (a personalised algorithm: fedstack.personal)
            "local_only": local_only,  # each client trained alone from the initial model (eval.local_only)
            "parity": parity,  # coded training: the parity sets uploaded before round 1 (fedstack.coded)
        },
        "best_test_accuracy": max(accuracies) if accuracies else None,
        "profile": history.profile,
        "seed": seed,
        "config": config,
        "versions": versions(),
    }
    contributed = contribution_summary(rounds)
    if contributed is not None:
        summary["contribution"] = contributed
    if deployed:
        summary["deployed"] = True
    return summary


def contribution_summary(rounds: list[dict]) -> dict | None:
    """summary.json's `contribution` (runs with contribution scores): each method's scores accumulated by client,
    the rounds each client was scored in, and the payout of the budget (`contribution.payout`) by the first
    method's positive totals."""
    from .contribution import accumulate, participation, payout

    totals = accumulate(rounds)
    if not totals:
        return None
    budget = next((r["contribution"].get("payout", 0.0) for r in reversed(rounds) if r.get("contribution")), 0.0)
    method = next(iter(totals))
    return {"accumulated": {m: {str(c): v for c, v in scores.items()} for m, scores in totals.items()},
            "rounds": {str(c): n for c, n in participation(rounds).items()},
            "payout": {"budget": budget, "method": method,
                       "shares": {str(c): v for c, v in payout(totals[method], budget).items()}} if budget else None}


def _kinds(rounds: list[dict], key: str = "failures_by_kind") -> dict[str, int]:
    """Failures of the whole run by kind (dropout, deadline, unavailable, error, rejected), or the
    counts of another such dict of the round records (`rejected_by_reason`)."""
    totals: dict[str, int] = {}
    for r in rounds:
        for kind, count in (r.get(key) or {}).items():
            totals[kind] = totals.get(kind, 0) + count
    return totals


def _ratio(raw: int, sent: int) -> float | None:
    return raw / sent if sent else None


def versions() -> dict:
    """The versions a run's figures depend on; torch's None where it is not installed (a NumPy model's run)."""
    return {"fedstack": __version__, "python": platform.python_version(),
            "torch": _torch_version(), "numpy": np.__version__}


def _torch_version() -> str | None:
    import sys

    torch = sys.modules.get("torch")
    if torch is not None:
        return torch.__version__
    from importlib import metadata  # installed but not imported (a NumPy model's run): not worth its import time

    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return None


def default_run_dir() -> Path:
    """runs/<timestamp>, unique even for two runs in the same second."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path("runs") / stamp
    suffix = 1
    while path.exists():
        suffix += 1
        path = Path("runs") / f"{stamp}-{suffix}"
    return path


def prepare_run_dir(out: str | Path | None) -> Path:
    """Create the run directory, or fail now (before any training) naming the path."""
    path = Path(out) if out is not None else default_run_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise FedstackError(f"--out {path}: cannot write there ({exc.strerror or exc})") from None
    return path
