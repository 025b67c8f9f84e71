"""Run results: metrics file, summary table and plots."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fedstack.errors import FedstackError
from fedstack.files import append_line, write_atomic

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.png"
CONTRIBUTIONS_FILE = "contributions.csv"

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


class ContributionLedger:
    """Keeps run_dir/contributions.csv: each client's contribution accumulated over the rounds so far, one column
    per scoring method (and its payout, with a budget), rewritten atomically after each round. `rounds` is the
    run's record list (a resumed run's earlier rounds included)."""

    def __init__(self, run_dir, rounds: list[dict], budget: float = 0.0):
        self.path, self.rounds, self.budget = Path(run_dir) / CONTRIBUTIONS_FILE, rounds, budget

    def __call__(self, record: dict, params=None) -> None:
        write_atomic(self.path, contributions_csv(self.rounds, self.budget).encode())


def contributions_csv(rounds: list[dict], budget: float = 0.0) -> str:
    """The text of contributions.csv from a run's records: client, rounds scored, each method's total (and the
    payout of the first method's, where a budget is set)."""
    from .contribution import accumulate, participation, payout

    totals, counts = accumulate(rounds), participation(rounds)
    methods = list(totals)
    shares = payout(totals[methods[0]], budget) if methods and budget else None
    lines = [",".join(["client", "rounds", *methods, *(["payout"] if shares is not None else [])])]
    for client in sorted(counts):
        cells = [str(client), str(counts[client]), *(f"{totals[m].get(client, 0.0):.6g}" for m in methods)]
        if shares is not None:
            cells.append(f"{shares.get(client, 0.0):.6g}")
        lines.append(",".join(cells))
    return "\n".join(lines) + "\n"


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
    """Draw the run's figures per round (`draw_report`) into run_dir/report.png and return its path;
    MissingExtra without matplotlib (the `plots` extra)."""
    from .extras import require

    require("matplotlib", "plots", "the report's plot").use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    metrics = read_metrics(run_dir)
    summary = read_summary(run_dir) if (run_dir / SUMMARY_FILE).exists() else None
    fig = draw_report(metrics, summary, _run_title(run_dir, summary))
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    return write_atomic(run_dir / REPORT_FILE, png.getvalue())  # a failed write names the file


def time_unit(seconds: float) -> tuple[str, float]:
    """(unit name, seconds per unit) to show a span of `seconds`: seconds up to 2 minutes, minutes up to 2
    hours, then hours."""
    if seconds < 120:
        return "seconds", 1.0
    if seconds < 2 * 3600:
        return "minutes", 60.0
    return "hours", 3600.0


def byte_unit(n: float) -> tuple[str, float]:
    """(unit name, bytes per unit) to show amounts up to `n` bytes: B, KiB, MiB or GiB."""
    for unit, size in (("GiB", 1024.0**3), ("MiB", float(_MIB)), ("KiB", 1024.0)):
        if n >= size:
            return unit, size
    return "B", 1.0


def draw_report(metrics: list[dict], summary: dict | None = None, title: str = ""):
    """The report's matplotlib Figure: one panel per figure the run has, none empty.

    Always: test accuracy; loss (test, and the clients' mean training loss); traffic per round;
    clients per round (accepted, and failures by kind); accuracy against bytes uploaded; accuracy against
    time (a simulation: the simulated clock of its device fleet; a deployed run, `deployed` in its
    summary: wall time). When the run has them: privacy spent, rejected updates by reason, the clients'
    own accuracies (the global model's, fine-tuned, personal: their distributions after the last round
    that has them), and for clustered training each client's cluster per round with its agreement with
    planted groups.
    """
    from .extras import require

    plt = require("matplotlib.pyplot", "plots", "the report's plot")
    from matplotlib.ticker import MaxNLocator

    deployed = bool((summary or {}).get("deployed"))
    evaluated = [m for m in metrics if m.get("test_accuracy") is not None]
    private = [m for m in metrics if m.get("epsilon") is not None or m.get("client_epsilon_max") is not None]
    rejections = rejections_per_round(metrics)

    panels = ["accuracy", "loss", "traffic", "clients", "upload", "time"]
    if private:
        panels.append("privacy")
    if rejections:
        panels.append("rejected")
    distributions = _client_distributions(metrics)
    if distributions:
        panels.append("per_client")
    clustered = [m for m in metrics if m.get("clusters") is not None]
    if clustered:
        panels.append("clusters")
    from .contribution import accumulate

    contributions = accumulate(metrics)
    if contributions:
        panels.append("contribution")
    fig = plt.figure(figsize=(16 * ((len(panels) + 1) // 2) / 3, 8))
    ax = _add_panels(fig, panels)

    _draw_accuracy(ax["accuracy"], metrics, evaluated)
    _draw_loss(ax["loss"], metrics)
    _draw_traffic(ax["traffic"], metrics)
    _draw_clients(ax["clients"], metrics)
    _draw_accuracy_vs_upload(ax["upload"], metrics, evaluated)
    _draw_accuracy_vs_time(ax["time"], evaluated, deployed)
    if private:
        _draw_privacy(ax["privacy"], private)
    if rejections:
        _draw_rejections(ax["rejected"], metrics, rejections)
    if distributions:
        _draw_client_distributions(ax["per_client"], distributions)
    if clustered:
        _draw_clusters(ax["clusters"], clustered)
    if contributions:
        _draw_contributions(ax["contribution"], contributions)

    for name, panel in ax.items():
        panel.grid(alpha=0.3)
        if name in ("accuracy", "loss", "traffic", "clients", "privacy", "rejected"):
            panel.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax["clients"].yaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title + (" — deployed" if deployed else ""))
    fig.tight_layout()
    return fig


def _add_panels(fig, panels: list[str]) -> dict:
    """One Axes per panel name, in two rows and with no empty slot.

    The top row takes the extra panel of an odd count, and each row's panels share its width equally
    (a grid as wide as both rows' counts' least common multiple).
    """
    top = (len(panels) + 1) // 2
    bottom = len(panels) - top
    width = math.lcm(top, bottom)
    grid = fig.add_gridspec(2, width)
    ax = {}
    for i, name in enumerate(panels):
        row, col, count = (0, i, top) if i < top else (1, i - top, bottom)
        span = width // count
        ax[name] = fig.add_subplot(grid[row, col * span:(col + 1) * span])
    return ax


def _draw_accuracy(acc_ax, metrics: list[dict], evaluated: list[dict]) -> None:
    """Test accuracy per round, with the clients' federated and fine-tuned spread when the run has them."""
    acc_ax.plot([m["round"] for m in evaluated], [m["test_accuracy"] for m in evaluated],
                marker="o", label="test (global model)")
    for key, color, label in (("federated", "tab:orange", "federated mean (p10–p90)"),
                              ("personalized", "tab:green", "after fine-tuning"),
                              ("personal", "tab:purple", "personal models")):
        records = [m for m in metrics if m.get(key) and m[key].get("of") != "loss"]  # losses: not on this axis
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


def _client_distributions(metrics: list[dict]) -> dict[str, list[float]]:
    """Each client's accuracy under the global model, fine-tuned, personal and local-only, from the last
    round that has each (losses, a task without classes, are left out: they share no axis with accuracies)."""
    found = {}
    for key, label in (("federated", "global model"), ("personalized", "fine-tuned"), ("personal", "personal"),
                       ("local_only", "local only")):
        last = next((m[key] for m in reversed(metrics) if m.get(key) and m[key].get("by_client")), None)
        if last is not None and last.get("of") != "loss":
            found[label] = list(last["by_client"].values())
    return found


def _draw_client_distributions(ax, distributions: dict[str, list[float]]) -> None:
    ax.boxplot(list(distributions.values()), whis=(10, 90))  # whiskers at p10 and p90, as the records state them
    ax.set_xticks(range(1, len(distributions) + 1), list(distributions))
    ax.set(title="Each client's held-out accuracy", ylabel="accuracy (whiskers: p10, p90)")


def _draw_clusters(ax, records: list[dict]) -> None:
    """Each client's cluster per round (a colour per cluster, blank: not seen yet), and the adjusted Rand
    index with the planted groups where known."""
    rounds = [m["round"] for m in records]
    grid = np.array([m["clusters"] for m in records], dtype=float).T
    grid[grid < 0] = np.nan
    ax.imshow(grid, aspect="auto", interpolation="nearest", cmap="tab10",
              extent=(rounds[0] - 0.5, rounds[-1] + 0.5, grid.shape[0] - 0.5, -0.5))
    ax.set(title="Clusters (colour per cluster)", xlabel="round", ylabel="client")
    aris = [(m["round"], m["cluster_ari"]) for m in records if m.get("cluster_ari") is not None]
    if aris:
        twin = ax.twinx()
        twin.plot(*zip(*aris), color="black", marker=".", label="adjusted Rand index")
        twin.set(ylim=(-0.05, 1.05), ylabel="adjusted Rand index")
        twin.legend(loc="lower right")


def _draw_contributions(ax, totals: dict[str, dict[int, float]]) -> None:
    """Each client's contribution accumulated over the run, ranked by the first method's (bars), with the other
    methods' totals scaled to the same range as marks (their units differ: utility for Shapley, GTG and
    leave-one-out, a cosine for cosine)."""
    methods = list(totals)
    first = totals[methods[0]]
    ranked = sorted(first, key=lambda c: -first[c])
    positions = np.arange(len(ranked))
    ax.bar(positions, [first[c] for c in ranked], color="tab:blue", alpha=0.7, label=methods[0])
    scale = max((abs(v) for v in first.values()), default=0.0) or 1.0
    for method, marker in zip(methods[1:], "oxsd^v"):
        values = np.array([totals[method].get(c, 0.0) for c in ranked])
        span = np.abs(values).max() or 1.0
        ax.plot(positions, values / span * scale, linestyle="none", marker=marker, label=f"{method} (scaled)")
    ax.axhline(0, color="black", linewidth=0.8)
    step = max(1, len(ranked) // 20)  # at most ~20 client labels
    ax.set_xticks(positions[::step], [str(c) for c in ranked][::step])
    ax.set(title="Contribution over the run, ranked", xlabel="client", ylabel=f"accumulated {methods[0]}")
    ax.legend(fontsize="small")


def _draw_loss(loss_ax, metrics: list[dict]) -> None:
    """Test loss and the clients' mean training loss per round, each when the run has it."""
    for key, color, style, label in (("test_loss", "tab:red", "-", "test (global model)"),
                                     ("train_loss", "tab:blue", "--", "train (clients' mean, local training)")):
        points = [(m["round"], m[key]) for m in metrics if m.get(key) is not None]
        if points:
            loss_ax.plot(*zip(*points), marker="o", color=color, linestyle=style, label=label)
    loss_ax.set(title="Loss", xlabel="round", ylabel="loss")
    if loss_ax.lines:
        loss_ax.legend()


def _draw_traffic(bytes_ax, metrics: list[dict]) -> None:
    """Bytes up and down per round."""
    rounds = [m["round"] for m in metrics]
    up = [m.get("bytes_up", 0) for m in metrics]
    down = [m.get("bytes_down", 0) for m in metrics]
    # Up and down are often equal (a float32 model each way): a wide solid line under a dashed one, both seen.
    unit, size = byte_unit(max(up + down, default=0))
    bytes_ax.plot(rounds, [b / size for b in up], marker="o", markersize=9, linewidth=4, alpha=0.6,
                  color="tab:blue", label="up (clients → server)")
    bytes_ax.plot(rounds, [b / size for b in down], marker="x", markersize=8, linewidth=1.5, linestyle="--",
                  color="tab:orange", label="down (server → clients)")
    bytes_ax.set(title="Traffic per round", xlabel="round", ylabel=unit)
    bytes_ax.set_ylim(bottom=0)
    bytes_ax.legend()


def _draw_clients(clients_ax, metrics: list[dict]) -> None:
    """Clients aggregated per round, with the failed ones stacked on top by kind of failure."""
    rounds = [m["round"] for m in metrics]
    accepted = [m.get("clients", 0) for m in metrics]
    clients_ax.bar(rounds, accepted, color="tab:green", label="aggregated")
    bottom = list(accepted)
    kinds: dict[str, list[int]] = {}
    for i, m in enumerate(metrics):
        for kind, count in (m.get("failures_by_kind") or {}).items():
            if count:
                kinds.setdefault(kind, [0] * len(metrics))[i] = count
    for kind, counts in kinds.items():
        clients_ax.bar(rounds, counts, bottom=bottom, label=f"failed: {kind}")
        bottom = [b + c for b, c in zip(bottom, counts)]
    clients_ax.set(title="Clients per round", xlabel="round", ylabel="clients")
    if kinds:  # room above the bars for the legend
        clients_ax.set_ylim(top=1.35 * max(bottom, default=1))
        clients_ax.legend(loc="upper right", ncols=2, fontsize="small")


def _draw_accuracy_vs_upload(curve_ax, metrics: list[dict], evaluated: list[dict]) -> None:
    """Test accuracy against the bytes the clients have uploaded so far."""
    cumulative_up, total = {}, 0
    for m in metrics:
        total += m.get("bytes_up", 0)
        cumulative_up[m["round"]] = total
    unit, size = byte_unit(max(cumulative_up.values(), default=0))
    curve_ax.plot([cumulative_up[m["round"]] / size for m in evaluated],
                  [m["test_accuracy"] for m in evaluated], marker="o")
    curve_ax.set(title="Accuracy vs upload", xlabel=f"cumulative {unit} uploaded", ylabel="accuracy")


def _draw_accuracy_vs_time(time_ax, evaluated: list[dict], deployed: bool) -> None:
    """Test accuracy against time: a deployed run's wall time, a simulation's simulated clock."""
    # A simulation: what a real fleet would take, the simulated clock of the device model (systems.py).
    # A deployed run has no simulated fleet: its own wall time.
    key, what = ("wall_time_s", "wall time") if deployed else ("sim_time_s", "simulated time")
    timed = [m for m in evaluated if m.get(key) is not None]
    unit, size = time_unit(max((m[key] for m in timed), default=0.0))
    time_ax.plot([m[key] / size for m in timed], [m["test_accuracy"] for m in timed], marker="o",
                 color="tab:purple")
    time_ax.set(title=f"Accuracy vs {what}", xlabel=f"{what} ({unit})", ylabel="accuracy")


def _draw_privacy(privacy_ax, private: list[dict]) -> None:
    """Differential privacy: what the run has spent, round by round."""
    for key, label in (("epsilon", "ε of the run (client level)"),
                       ("client_epsilon_max", "largest client's own ε (DP-SGD)")):
        points = [(m["round"], m[key]) for m in private if m.get(key) is not None]
        if points:
            privacy_ax.plot(*zip(*points), marker="o", label=label)
    privacy_ax.set(title="Privacy spent", xlabel="round", ylabel="ε")
    privacy_ax.legend()


def _draw_rejections(rejected_ax, metrics: list[dict], rejections: dict[str, list[int]]) -> None:
    """Rejected updates per round, stacked by reason."""
    from matplotlib.ticker import MaxNLocator

    rounds = [m["round"] for m in metrics]
    bottom = [0] * len(rounds)
    for reason, counts in rejections.items():
        rejected_ax.bar(rounds, counts, bottom=bottom, label=reason)
        bottom = [b + c for b, c in zip(bottom, counts)]
    rejected_ax.set(title="Rejected updates per round", xlabel="round", ylabel="updates")
    rejected_ax.legend()
    rejected_ax.yaxis.set_major_locator(MaxNLocator(integer=True))


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
    train_loss = next((m["train_loss"] for m in reversed(metrics) if m.get("train_loss") is not None), None)
    if train_loss is not None:
        table.add_row("last train loss (clients' mean)", f"{train_loss:.4f}")
    for key, label in (("federated", "federated"), ("personalized", "fine-tuned"), ("personal", "personal"),
                       ("local_only", "local-only")):
        fed = final.get(key)
        if fed:
            of_loss = fed.get("of") == "loss"  # a task without classes: the spread of the clients' losses
            for stat in ("mean", "p10", "p50", "p90"):
                value = fed.get(stat)
                shown = "-" if value is None else f"{value:.4f}" if of_loss else _percent(value)
                table.add_row(f"{label} {stat} {'loss' if of_loss else 'accuracy'}", shown)
    table.add_row("bytes up (total)", human_bytes(final.get("bytes_up_total", 0)))
    table.add_row("bytes down (total)", human_bytes(final.get("bytes_down_total", 0)))
    for key, label in (("compression_up", "upload"), ("compression_down", "download")):
        if final.get(key) is not None and abs(final[key] - 1) > 1e-9:
            table.add_row(f"{label} compression vs float32", f"{final[key]:.1f}×")
    table.add_row("wall time of the rounds (from engine start)", _seconds(final.get("wall_time_s")))
    if summary.get("total_time_s") is not None:
        table.add_row("total time of the command (with start-up)", _seconds(summary["total_time_s"]))
    if not summary.get("deployed"):  # a deployed run's devices are real: no simulated clock
        table.add_row("simulated time (device fleet)", _seconds(final.get("sim_time_s")))
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


def write_report(run_dir) -> Path | None:
    """Write the report of a run and return the path of its plot: None, with a warning naming the `pip
    install` that adds it, where matplotlib is not installed (the run's figures are in its metrics and
    summary all the same)."""
    from .extras import MissingExtra

    try:
        return plot_report(run_dir)
    except MissingExtra as exc:
        import logging

        logging.getLogger("fedstack.report").warning("%s; no %s written", exc, REPORT_FILE)
        return None


def status_tables(state: dict) -> list:
    """`fedstack status`: a dashboard's state (its /api/state) as rich tables — each run's progress and
    latest figures, and a deployed server's clients with their state and the refusals it counted."""
    from rich.table import Table

    tables = []
    for run in state.get("runs", []):
        records = run.get("records") or []
        last = records[-1] if records else {}
        evaluated = [r for r in records if r.get("test_accuracy") is not None]
        table = Table(title=f"{run.get('name', 'run')} ({run.get('mode', '')}, {run.get('strategy', '')})")
        table.add_column("figure")
        table.add_column("value", justify="right")
        table.add_row("status", str(run.get("status", "")))
        table.add_row("round", f"{last.get('round', 0)} / {run.get('rounds_total', '?')}")
        if evaluated:
            table.add_row("test accuracy", _percent(evaluated[-1]["test_accuracy"]))
        table.add_row("wall time of the rounds", _seconds(last.get("wall_time_s")))
        table.add_row("bytes up / down", f"{human_bytes(sum(r.get('bytes_up', 0) for r in records))} / "
                      f"{human_bytes(sum(r.get('bytes_down', 0) for r in records))}")
        table.add_row("failures", str(sum(r.get("failures", 0) for r in records)))
        if last.get("epsilon") is not None:
            budget = run.get("epsilon_budget")
            table.add_row("ε spent", f"{last['epsilon']:.3g}" + (f" of {budget:.3g}" if budget else ""))
        tables.append(table)
        server = run.get("server")
        if server:
            clients = Table(title=f"clients: {server.get('connected_count', 0)} of {server.get('registered', 0)} "
                            f"connected, round in progress: {server.get('round') or '-'}")
            for column in ("client", "state", "last seen", "joins", "rounds", "refused", "uplink"):
                clients.add_column(column)
            for c in server.get("connected", []):
                seen = "never" if c.get("last_seen_s") is None else f"{c['last_seen_s']:.1f} s ago"
                speed = c.get("uplink_bytes_per_s")
                clients.add_row(str(c.get("client")), str(c.get("state")), seen, str(c.get("joins", "")),
                                str(c.get("rounds", "")), str(c.get("refused", "")),
                                "-" if speed is None else f"{human_bytes(int(speed))}/s")
            tables.append(clients)
            refused = server.get("refused") or {}
            if refused:
                table.add_row("refused messages", ", ".join(f"{n} × {k}" for k, n in sorted(refused.items())))
    return tables
