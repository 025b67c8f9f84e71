import json

import numpy as np
import pytest
from rich.console import Console

from fedstack.errors import FedstackError
from fedstack.report import (
    draw_report,
    human_bytes,
    plot_report,
    print_summary,
    read_metrics,
    read_summary,
    summary_table,
    time_unit,
    write_report,
)

FEDERATED = {"mean": 0.71, "p10": 0.55, "p50": 0.72, "p90": 0.84, "clients": 10}
PERSONALIZED = {"mean": 0.83, "p10": 0.66, "p50": 0.85, "p90": 0.97, "clients": 10}

METRICS = [
    {"round": 1, "test_accuracy": 0.42, "test_loss": 1.8, "clients": 10, "failures": 0,
     "bytes_up": 2_000_000, "bytes_down": 2_100_000, "wall_time_s": 1.2, "sim_time_s": 10.0},
    {"round": 2, "test_accuracy": None, "test_loss": None, "clients": 9, "failures": 1,
     "bytes_up": 1_800_000, "bytes_down": 2_100_000, "wall_time_s": 2.3, "sim_time_s": 20.0},
    {"round": 3, "test_accuracy": 0.61, "test_loss": 1.1, "clients": 10, "failures": 0,
     "bytes_up": 2_000_000, "bytes_down": 2_100_000, "wall_time_s": 3.5, "sim_time_s": 30.0,
     "federated": FEDERATED, "personalized": PERSONALIZED},
    {"round": 4, "test_accuracy": 0.7345, "test_loss": 0.8, "clients": 10, "failures": 0,
     "bytes_up": 2_000_000, "bytes_down": 2_100_000, "wall_time_s": 4.6, "sim_time_s": 40.0,
     "epsilon": 2.5},
]

SUMMARY = {
    "run_dir": "runs/demo",
    "rounds": 4,
    "final": {"test_accuracy": 0.7345, "test_loss": 0.8, "wall_time_s": 4.6, "sim_time_s": 40.0,
              "bytes_up_total": 1536, "bytes_down_total": 5 * 1024**3, "failures_total": 1,
              "federated": FEDERATED, "personalized": PERSONALIZED},
    "best_test_accuracy": 0.7345,
    "seed": 1234,
    "config": {"strategy": {"name": "fedavg"}, "data": {"dataset": "mnist"}},
    "versions": {"fedstack": "0.1.0", "python": "3.11", "torch": "2.13.0", "numpy": "1.26"},
    "status": "finished",
}


@pytest.fixture
def run_dir(tmp_path):
    path = tmp_path / "demo"
    path.mkdir()
    (path / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in METRICS))
    (path / "summary.json").write_text(json.dumps(SUMMARY))
    return path


def test_read_metrics_round_trips(run_dir):
    assert read_metrics(run_dir) == METRICS


def test_malformed_metrics_line_names_file_and_line(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    lines[2] = '{"round": 3, "test_accuracy": '
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(FedstackError, match=r"metrics\.jsonl, line 3"):
        read_metrics(run_dir)


def test_missing_summary_names_file(tmp_path):
    with pytest.raises(FedstackError, match=r"summary\.json"):
        read_summary(tmp_path)


def test_malformed_summary_names_file(run_dir):
    (run_dir / "summary.json").write_text("{not json")
    with pytest.raises(FedstackError, match=r"summary\.json"):
        read_summary(run_dir)


def test_plot_report_writes_png(run_dir):
    path = plot_report(run_dir)
    assert path == run_dir / "report.png"
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 10_000


def test_write_report_returns_png_without_summary(run_dir):
    (run_dir / "summary.json").unlink()
    path = write_report(run_dir)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_summary_table_shows_headline_figures(run_dir):
    console = Console(record=True, width=100)
    console.print(summary_table(read_summary(run_dir), read_metrics(run_dir)))
    text = console.export_text()
    assert "73.45%" in text
    assert "71.00%" in text  # federated mean
    assert "fine-tuned p10 accuracy" in text and "66.00%" in text
    assert "1.5 KiB" in text
    assert "5.0 GiB" in text
    assert "finished" in text


def test_print_summary_prints_table(run_dir):
    console = Console(record=True, width=100)
    print_summary(run_dir, console)
    assert "73.45%" in console.export_text()


@pytest.mark.parametrize(
    ("n", "expected"),
    [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"), (5 * 1024**3, "5.0 GiB")],
)
def test_human_bytes(n, expected):
    assert human_bytes(n) == expected


def _panels(fig):
    return {ax.get_title(): ax for ax in fig.axes}


def _has_data(ax) -> bool:
    return bool(ax.lines or ax.patches or ax.collections or ax.images)


def test_the_report_has_no_empty_panel_and_a_train_loss_curve():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [{**m, "train_loss": 2.0 - 0.3 * m["round"]} for m in METRICS]
    for records, panels in ((metrics, 7), ([{k: v for k, v in m.items() if k != "epsilon"} for m in metrics], 6),
                            ([{**m, "rejected_by_reason": {"norm": 1}} for m in metrics], 8)):
        fig = draw_report(records, SUMMARY, "demo")
        try:
            assert len(fig.axes) == panels
            assert all(ax.get_visible() and ax.axison and _has_data(ax) for ax in fig.axes)
            loss = _panels(fig)["Loss"]
            assert [line.get_label().split()[0] for line in loss.lines] == ["test", "train"]
            assert list(loss.lines[1].get_ydata()) == [m["train_loss"] for m in metrics]
        finally:
            plt.close(fig)


def test_equal_up_and_down_traffic_stay_distinguishable():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [{**m, "bytes_down": m["bytes_up"]} for m in METRICS]
    fig = draw_report(metrics, SUMMARY)
    try:
        up, down = _panels(fig)["Traffic per round"].lines
        assert list(up.get_ydata()) == list(down.get_ydata())
        assert up.get_linestyle() != down.get_linestyle() and up.get_color() != down.get_color()
        assert up.get_marker() != down.get_marker() and up.get_linewidth() > down.get_linewidth()
    finally:
        plt.close(fig)


def test_the_time_axis_takes_a_unit_by_magnitude_and_a_deployed_run_plots_wall_time():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    assert time_unit(21.6) == ("seconds", 1.0) and time_unit(600) == ("minutes", 60.0)
    assert time_unit(36_000) == ("hours", 3600.0)
    short = [{**m, "sim_time_s": m["sim_time_s"] / 1000} for m in METRICS]  # 0.04 s: not 0.00001 hours
    for summary, title, label, values in (
            (SUMMARY, "Accuracy vs simulated time", "simulated time (seconds)", [0.01, 0.03, 0.04]),
            ({**SUMMARY, "deployed": True}, "Accuracy vs wall time", "wall time (seconds)", [1.2, 3.5, 4.6])):
        fig = draw_report(short, summary)
        try:
            ax = _panels(fig)[title]
            assert ax.get_xlabel() == label and list(ax.lines[0].get_xdata()) == pytest.approx(values)
        finally:
            plt.close(fig)
    hours = [{**m, "sim_time_s": m["sim_time_s"] * 1000} for m in METRICS]
    fig = draw_report(hours, SUMMARY)
    try:
        assert _panels(fig)["Accuracy vs simulated time"].get_xlabel() == "simulated time (hours)"
    finally:
        plt.close(fig)


def test_the_summary_labels_its_times_and_a_deployed_run_shows_no_simulated_time(run_dir):
    def rows(summary):
        console = Console(record=True, width=120)
        console.print(summary_table(summary, METRICS))
        return console.export_text()

    text = rows({**SUMMARY, "total_time_s": 9.25})
    assert "wall time of the rounds (from engine start)" in text and "4.6 s" in text
    assert "total time of the command (with start-up)" in text and "9.2 s" in text
    assert "simulated time (device fleet)" in text and "40.0 s" in text
    deployed = rows({**SUMMARY, "deployed": True})
    assert "simulated" not in deployed and "40.0 s" not in deployed and "total time" not in deployed


def test_a_regressions_federated_spread_is_shown_as_losses_not_accuracies(run_dir):
    losses = {"mean": 0.25, "p10": 0.125, "p50": 0.25, "p90": 0.5, "clients": 2, "of": "loss"}
    summary = {**SUMMARY, "final": {**SUMMARY["final"], "test_accuracy": None, "federated": losses,
                                    "personalized": None}}
    console = Console(record=True, width=120)
    console.print(summary_table(summary, METRICS))
    text = console.export_text()
    assert "federated mean loss" in text and "0.2500" in text and "federated mean accuracy" not in text


def test_a_closed_pipe_ends_fedstack_report_quietly(run_dir):
    import subprocess
    import sys

    reader = subprocess.Popen([sys.executable, "-m", "fedstack.cli", "report", str(run_dir)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert reader.stdout.readline()  # the summary table comes first; `| head -1` then stops reading ...
    reader.stdout.close()  # ... while the plot is drawn, and its line finds the pipe closed
    code, err = reader.wait(timeout=60), reader.stderr.read().decode()
    assert code == 141 and "Traceback" not in err, err


def test_personal_and_clustered_runs_get_a_per_client_panel_and_a_clusters_panel():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    own = {"mean": 0.9, "p10": 0.8, "p50": 0.9, "p90": 1.0, "clients": 3, "by_client": {"0": 0.8, "1": 0.9, "2": 1.0}}
    glob = {**own, "mean": 0.5, "p10": 0.2, "p50": 0.5, "p90": 0.8, "by_client": {"0": 0.2, "1": 0.5, "2": 0.8}}
    metrics = [{**m, "personal": own, "federated": glob, "clusters": [0, 0, 1] if m["round"] > 1 else [0, -1, -1],
                "cluster_ari": 1.0 if m["round"] > 1 else 0.0} for m in METRICS]
    fig = draw_report(metrics, SUMMARY, "demo")
    try:
        panels = _panels(fig)
        boxes = panels["Each client's held-out accuracy"]
        assert [t.get_text() for t in boxes.get_xticklabels()] == ["global model", "personal"]
        grid = panels["Clusters (colour per cluster)"].images[0].get_array()
        assert grid.shape == (3, len(METRICS)) and np.isnan(np.ma.getdata(grid)[1, 0]) and grid[2, -1] == 1
        assert all(ax.get_visible() and _has_data(ax) for ax in fig.axes)
    finally:
        plt.close(fig)


def test_contribution_scores_get_a_ranked_panel():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Accumulated gtg: client 2 → 0.3 + 0.1 = 0.4, client 0 → 0.1, client 1 → −0.2 (a label flipper).
    scores = [{"0": 0.1, "1": -0.1, "2": 0.3}, {"1": -0.1, "2": 0.1}]
    metrics = [{**m, "contribution": {"clients": [int(c) for c in s], "methods": {
        "gtg": {"scores": s, "evaluations": 3, "seconds": 0.1},
        "cosine": {"scores": {c: v * 2 for c, v in s.items()}, "evaluations": 0, "seconds": 0.0}}}}
        for m, s in zip(METRICS, scores)]
    fig = draw_report(metrics, SUMMARY, "demo")
    try:
        panel = _panels(fig)["Contribution over the run, ranked"]
        assert [t.get_text() for t in panel.get_xticklabels()] == ["2", "0", "1"]
        assert [bar.get_height() for bar in panel.patches] == pytest.approx([0.4, 0.1, -0.2])
        assert panel.lines[0].get_label() == "cosine (scaled)"
    finally:
        plt.close(fig)
