import json

import pytest
from rich.console import Console

from fedstack.errors import FedstackError
from fedstack.report import (
    human_bytes,
    plot_report,
    print_summary,
    read_metrics,
    read_summary,
    summary_table,
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
