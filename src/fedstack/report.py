"""Run results: metrics file, summary table and plots."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import TYPE_CHECKING

from fedstack.errors import FedstackError
from fedstack.files import append_line, write_atomic

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.png"

_MIB = 1024**2


class MetricsWriter:
    """Appends one JSON line per round to run_dir/metrics.jsonl, fsynced so a crash or power cut keeps it.

    A crash in the middle of an append can leave a torn last line: `read_metrics` skips it, and a
    resumed run rewrites the file from its store.
    """

    def __init__(self, run_dir, earlier: list[dict] = ()):
        """Start the file afresh with the `earlier` records of a resumed run (the store's, which are authoritative)."""
        self.path = Path(run_dir) / METRICS_FILE
        write_atomic(self.path, "".join(json.dumps(r) + "\n" for r in earlier).encode())

    def __call__(self, record: dict, params=None) -> None:
        append_line(self.path, json.dumps(record))


def write_summary(run_dir, summary: dict) -> Path:
    """Write run_dir/summary.json through a temporary file and a rename: never half a summary."""
    return write_atomic(Path(run_dir) / SUMMARY_FILE, (json.dumps(summary, indent=2) + "\n").encode())


def read_metrics(run_dir) -> list[dict]:
    """Return the per-round records of a run, in file order.

    A last line without its newline that is not valid JSON is an append a crash cut short: skipped.
    """
    path = Path(run_dir) / METRICS_FILE
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise FedstackError(f"cannot read {path}: {exc.strerror or exc}") from exc
    lines = text.splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines) and not text.endswith("\n"):
                break  # torn by a crash during the append
            raise FedstackError(f"{path}, line {number}: not valid JSON ({exc.msg})") from exc
        if not isinstance(record, dict):
            raise FedstackError(f"{path}, line {number}: expected a JSON object")
        records.append(record)
    return records


def read_summary(run_dir) -> dict:
    """Return the end-of-run summary of a run."""
    path = Path(run_dir) / SUMMARY_FILE
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise FedstackError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise FedstackError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from exc
    if not isinstance(summary, dict):
        raise FedstackError(f"{path}: expected a JSON object")
    return summary


def human_bytes(n: int) -> str:
    """Format a byte count in binary units, e.g. 1536 -> "1.5 KiB"."""
    if abs(n) < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if abs(value) < 1024:
            break
    return f"{value:.1f} {unit}"


def _percent(value) -> str:
    return "-" if value is None else f"{value * 100:.2f}%"


def _seconds(value) -> str:
    return "-" if value is None else f"{value:.1f} s"


def _run_title(run_dir: Path, summary: dict | None) -> str:
    """The run directory's name, followed by strategy and dataset when the config names them."""
    config = (summary or {}).get("config") or {}
    strategy = (config.get("server") or {}).get("strategy")
    dataset = (config.get("data") or {}).get("name")
    parts = [part for part in (strategy, dataset) if part]
    return run_dir.resolve().name + (f" ({' / '.join(parts)})" if parts else "")


def plot_report(run_dir) -> Path:
    """Draw accuracy, loss and traffic per round into run_dir/report.png and return its path."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    run_dir = Path(run_dir)
    metrics = read_metrics(run_dir)
    summary = read_summary(run_dir) if (run_dir / SUMMARY_FILE).exists() else None

    rounds = [m["round"] for m in metrics]
    evaluated = [m for m in metrics if m.get("test_accuracy") is not None]
    with_loss = [m for m in metrics if m.get("test_loss") is not None]
    federated = [m for m in metrics if m.get("federated")]
    personalized = [m for m in metrics if m.get("personalized")]
    up_mb = [m.get("bytes_up", 0) / _MIB for m in metrics]
    down_mb = [m.get("bytes_down", 0) / _MIB for m in metrics]
    cumulative_up = {}
    total = 0.0
    for m, mb in zip(metrics, up_mb):
        total += mb
        cumulative_up[m["round"]] = total

    private = [m for m in metrics if m.get("epsilon") is not None or m.get("client_epsilon_max") is not None]
    rejections = rejections_per_round(metrics)
    # A seventh panel when there is something in it: rejected updates per round, by reason.
    columns = 4 if rejections else 3
    fig, axes = plt.subplots(2, columns, figsize=(16 * columns / 3, 8))
    acc_ax, loss_ax, bytes_ax = axes[0, :3]
    curve_ax, time_ax, privacy_ax = axes[1, :3]
    if rejections:
        rejected_ax = axes[0, 3]
        axes[1, 3].axis("off")
        bottom = [0] * len(rounds)
        for reason, counts in rejections.items():
            rejected_ax.bar(rounds, counts, bottom=bottom, label=reason)
            bottom = [b + c for b, c in zip(bottom, counts)]
        rejected_ax.set(title="Rejected updates per round", xlabel="round", ylabel="updates")
        rejected_ax.legend()
        rejected_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        rejected_ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    if private:  # differential privacy: what the run has spent, round by round
        for key, label in (("epsilon", "ε of the run (client level)"),
                           ("client_epsilon_max", "largest client's own ε (DP-SGD)")):
            points = [(m["round"], m[key]) for m in private if m.get(key) is not None]
            if points:
                privacy_ax.plot(*zip(*points), marker="o", label=label)
        privacy_ax.set(title="Privacy spent", xlabel="round", ylabel="ε")
        privacy_ax.legend()
    else:
        privacy_ax.axis("off")

    acc_ax.plot([m["round"] for m in evaluated], [m["test_accuracy"] for m in evaluated],
                marker="o", label="test (global model)")
    for key, records, color, label in (("federated", federated, "tab:orange", "federated mean (p10–p90)"),
                                       ("personalized", personalized, "tab:green", "after fine-tuning")):
        if not records:
            continue
        fed_rounds = [m["round"] for m in records]
        mean = [m[key]["mean"] for m in records]
        p10 = [m[key]["p10"] for m in records]
        p90 = [m[key]["p90"] for m in records]
        # Error bars as well as the band: a band over a single round has no width.
        acc_ax.errorbar(fed_rounds, mean, yerr=[[a - b for a, b in zip(mean, p10)],
                                                [b - a for a, b in zip(mean, p90)]],
                        marker="s", capsize=3, color=color, label=label)
        acc_ax.fill_between(fed_rounds, p10, p90, alpha=0.2, color=color)
    acc_ax.set(title="Test accuracy", xlabel="round", ylabel="accuracy")
    acc_ax.legend(loc="lower right")

    loss_ax.plot([m["round"] for m in with_loss], [m["test_loss"] for m in with_loss],
                 marker="o", color="tab:red")
    loss_ax.set(title="Test loss", xlabel="round", ylabel="loss")

    bytes_ax.plot(rounds, up_mb, marker="o", label="up")
    bytes_ax.plot(rounds, down_mb, marker="o", label="down")
    bytes_ax.set(title="Traffic per round", xlabel="round", ylabel="MiB")
    bytes_ax.legend()

    curve_ax.plot([cumulative_up[m["round"]] for m in evaluated],
                  [m["test_accuracy"] for m in evaluated], marker="o")
    curve_ax.set(title="Accuracy vs upload", xlabel="cumulative MiB uploaded", ylabel="accuracy")

    # What a real fleet would take: the simulated clock of the device model (systems.py).
    time_ax.plot([m.get("sim_time_s", 0.0) / 3600 for m in evaluated], [m["test_accuracy"] for m in evaluated],
                 marker="o", color="tab:purple")
    time_ax.set(title="Accuracy vs simulated time", xlabel="simulated hours", ylabel="accuracy")

    for ax in axes.flat:
        ax.grid(alpha=0.3)
    for ax in (acc_ax, loss_ax, bytes_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(_run_title(run_dir, summary))
    fig.tight_layout()

    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    return write_atomic(run_dir / REPORT_FILE, png.getvalue())  # a failed write names the file


def rejections_per_round(metrics: list[dict]) -> dict[str, list[int]]:
    """Rejected updates of each round by reason (`rejected_by_reason`), for the reasons that occurred."""
    reasons: dict[str, list[int]] = {}
    for i, m in enumerate(metrics):
        for reason, count in (m.get("rejected_by_reason") or {}).items():
            if count:
                reasons.setdefault(reason, [0] * len(metrics))[i] = count
    return reasons


def summary_table(summary: dict, metrics: list[dict]) -> Table:
    """Build a two-column table (figure, value) of a run's headline results."""
    from rich.table import Table  # rich and matplotlib load on use so importing this module stays fast

    final = summary.get("final") or {}
    rounds = summary.get("rounds", len(metrics))

    table = Table(title=summary.get("run_dir"))
    table.add_column("figure")
    table.add_column("value", justify="right")

    table.add_row("rounds", str(rounds))
    table.add_row("final test accuracy", _percent(final.get("test_accuracy")))
    table.add_row("best test accuracy", _percent(summary.get("best_test_accuracy")))
    spent = next((m.get("epsilon") for m in reversed(metrics) if m.get("epsilon") is not None), None)
    if spent is not None:
        delta = (summary.get("config") or {}).get("privacy", {}).get("delta")
        table.add_row("privacy spent", f"ε = {spent:.3g}" + (f" at δ = {delta:g}" if delta else ""))
    if summary.get("stopped"):
        table.add_row("stopped early", summary["stopped"])
    if final.get("test_top3_accuracy") is not None:
        table.add_row("final test top-3 accuracy", _percent(final.get("test_top3_accuracy")))
    loss = final.get("test_loss")
    table.add_row("final test loss", "-" if loss is None else f"{loss:.4f}")
    for key, label in (("federated", "federated"), ("personalized", "fine-tuned")):
        fed = final.get(key)
        if fed:
            for stat in ("mean", "p10", "p50", "p90"):
                table.add_row(f"{label} {stat} accuracy", _percent(fed.get(stat)))
    table.add_row("bytes up (total)", human_bytes(final.get("bytes_up_total", 0)))
    table.add_row("bytes down (total)", human_bytes(final.get("bytes_down_total", 0)))
    for key, label in (("compression_up", "upload"), ("compression_down", "download")):
        if final.get(key) is not None and abs(final[key] - 1) > 1e-9:
            table.add_row(f"{label} compression vs float32", f"{final[key]:.1f}×")
    table.add_row("wall time", _seconds(final.get("wall_time_s")))
    table.add_row("simulated time", _seconds(final.get("sim_time_s")))
    table.add_row("failures", str(final.get("failures_total", 0)))
    rejections = rejections_per_round(metrics)
    if rejections:
        by_reason = ", ".join(f"{reason} {sum(counts)}" for reason, counts in rejections.items())
        table.add_row("rejected updates", f"{sum(map(sum, rejections.values()))} ({by_reason})")
        per_round = [(m["round"], sum(counts[i] for counts in rejections.values())) for i, m in enumerate(metrics)]
        table.add_row("rejected per round", " ".join(f"r{r}:{n}" for r, n in per_round if n))
    for label, value in profile_rows(summary.get("profile")):
        table.add_row(label, value)
    table.add_row("seed", str(summary.get("seed", "-")))
    table.add_row("status", str(summary.get("status", "-")))
    return table


def profile_rows(profile: dict | None) -> list[tuple[str, str]]:
    """Where the time went (`--profile`): the workers' capacity by phase, then the server's own time."""
    if not profile:
        return []
    capacity = profile["workers"] * profile["wall_s"]

    def share(seconds: float, of: float) -> str:
        return f"{seconds:.1f} s ({100 * seconds / of:.0f}%)" if of > 0 else f"{seconds:.1f} s"

    rows = [(f"workers ({profile['workers']}): {label}", share(profile[key], capacity))
            for key, label in (("train_s", "training"), ("encode_s", "client codecs"),
                               ("evaluate_s", "evaluation"), ("idle_s", "idle (start-up, transport, imbalance)"))]
    rows += [(f"server: {label}", share(profile[key], profile["wall_s"]))
             for key, label in (("startup_s", "engine start"), ("wait_s", "waiting for clients"),
                                ("decode_s", "decoding updates"), ("aggregate_s", "aggregation"),
                                ("evaluate_wall_s", "evaluation"))]
    return rows


def print_summary(run_dir, console: Console | None = None) -> None:
    """Print the summary table of a run."""
    from rich.console import Console

    table = summary_table(read_summary(run_dir), read_metrics(run_dir))
    (console or Console()).print(table)


def write_report(run_dir) -> Path:
    """Write the report of a run and return the path of its plot."""
    return plot_report(run_dir)
