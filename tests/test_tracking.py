"""fedstack.tracking: the figures a round's record gives, and the TensorBoard and MLflow trackers, read back
with each tool's own reader (real event files and a real SQLite tracking database; no mocks)."""

import math

import numpy as np
import pytest

from fedstack.tracking import (
    MLflowTracker,
    TensorBoardTracker,
    distributions,
    flat_params,
    mlflow_name,
    scalars,
)

# MLflow's SQL store uses a loader SQLAlchemy 2 deprecates: not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")

PARAMS = np.zeros(3)


def record(round_: int, accuracy: float, dropout: int = 0) -> dict:
    """A round's line of metrics.jsonl, shaped like a real one."""
    return {
        "round": round_, "clients": 3, "bytes_up": 1200, "partial": 0, "failures": dropout,
        "rejected_by_reason": {"undecodable": 0, "shape": 1},
        "failures_by_kind": {"dropout": dropout, "deadline": 0},
        "train_loss": 2.0 / round_, "attempts": 1,
        "fit_metrics": {"steps": 5.5, "train_loss": 2.0 / round_},
        "fit_metrics_by_client": {"0": {"train_loss": 2.5, "steps": 2}, "1": {"train_loss": 1.5, "steps": 9}},
        "test_accuracy": accuracy, "test_loss": 1.0 - accuracy,
        "federated": {"mean": accuracy, "p10": 0.0, "p90": 0.9, "clients": 3,
                      "by_client": {"0": 0.0, "1": 0.5, "2": 0.9}},
        "wall_time_s": 0.25,
    }


ACCURACY = {1: 0.25, 2: 0.5, 3: 0.75}
RECORDS = [record(r, accuracy, dropout=r - 1) for r, accuracy in ACCURACY.items()]
CONFIG = {"seed": 0, "server": {"rounds": 3, "strategy": "fedavg", "lr": 0.1, "milestones": [1, 2]},
          "data": {"name": "mnist", "partition": None}, "secure": False}


def test_scalars_flatten_every_number_but_the_round_and_the_per_client_maps():
    assert scalars(record(2, 0.5, dropout=1)) == {
        "clients": 3.0, "bytes_up": 1200.0, "partial": 0.0, "failures": 1.0,
        "rejected_by_reason/undecodable": 0.0, "rejected_by_reason/shape": 1.0,
        "failures_by_kind/dropout": 1.0, "failures_by_kind/deadline": 0.0,
        "train_loss": 1.0, "attempts": 1.0, "fit_metrics/steps": 5.5, "fit_metrics/train_loss": 1.0,
        "test_accuracy": 0.5, "test_loss": 0.5,
        "federated/mean": 0.5, "federated/p10": 0.0, "federated/p90": 0.9, "federated/clients": 3.0,
        "wall_time_s": 0.25,
    }


def test_distributions_are_the_per_client_figures():
    assert distributions(record(2, 0.5)) == {
        "federated/by_client": [0.0, 0.5, 0.9],
        "fit_metrics_by_client/train_loss": [2.5, 1.5],
        "fit_metrics_by_client/steps": [2.0, 9.0],
    }


# What no plot can show: None, NaN, infinity, text, lists, flags; and a name MLflow would refuse.
ODD = {
    "round": 1, "train_loss": None, "test_loss": float("nan"), "test_accuracy": float("inf"), "note": "text",
    "clusters": [[0, 1], [2]], "secure": True, "flag": np.bool_(True), "count": np.int64(3),
    "epsilon": np.float32(1.5), "profile": {"engine": {"fit_s": 1.25, "name": "thread"}},
    "federated": {"mean": None, "by_client": {"0": None, "1": 0.5, "2": float("nan")}},
    "personal": {"mean": 0.4, "by_client": {}},
    "fit_metrics_by_client": {"0": {"train_loss": None, "note": "x"}, "1": "not a dict"},
    "odd name!": 2.0,
}


def test_values_that_are_not_finite_numbers_are_skipped():
    assert scalars(ODD) == {"count": 3.0, "epsilon": 1.5, "profile/engine/fit_s": 1.25, "personal/mean": 0.4,
                            "odd name!": 2.0}
    assert distributions(ODD) == {"federated/by_client": [0.5]}


def test_mlflow_names_and_params():
    assert mlflow_name("odd name!") == "odd name_"
    assert mlflow_name("/a//b/../c:") == "a/b/c_"
    assert flat_params(CONFIG) == {
        "seed": "0", "server.rounds": "3", "server.strategy": "fedavg", "server.lr": "0.1",
        "server.milestones": "[1, 2]", "data.name": "mnist", "data.partition": "null", "secure": "false",
    }
    assert flat_params({"long": "x" * 7000})["long"] == "x" * 6000


# --- TensorBoard ---------------------------------------------------------------------------------------


def read_tensorboard(log_dir):
    """An EventAccumulator over log_dir, keeping every event."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def read_tensorboard_as_served(log_dir):
    """The accumulator `tensorboard --load_fast=false` serves from. Unlike the one above, it drops the
    tensor summaries a restart supersedes (the Rust data server drops them too, by their steps going back)."""
    from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir), size_guidance={"tensors": 0})
    accumulator.Reload()
    return accumulator


def series(accumulator, tag) -> tuple[list[int], list[float]]:
    """The steps and values of a scalar, written as a tensor summary (TensorBoard's own format, as tf.summary
    writes it; float32, hence pytest.approx below)."""
    from tensorboard.util.tensor_util import make_ndarray

    events = accumulator.Tensors(tag)
    return [event.step for event in events], [make_ndarray(event.tensor_proto).item() for event in events]


def run_tensorboard(log_dir, records, start_round=1, status="finished", config=CONFIG):
    tracker = TensorBoardTracker(log_dir, config=config)
    tracker.on_start(3, start_round)
    for line in records:
        tracker.on_round(line, PARAMS)
    tracker.on_end(status)


def test_tensorboard_has_every_round_the_histograms_and_the_config(tmp_path):
    from tensorboard.util.tensor_util import make_ndarray

    run_tensorboard(tmp_path / "tb", RECORDS)
    accumulator = read_tensorboard(tmp_path / "tb")

    assert series(accumulator, "test_accuracy") == ([1, 2, 3], [0.25, 0.5, 0.75])
    assert series(accumulator, "failures_by_kind/dropout") == ([1, 2, 3], [0.0, 1.0, 2.0])
    steps, losses = series(accumulator, "fit_metrics/train_loss")
    assert steps == [1, 2, 3] and losses == pytest.approx([2.0, 1.0, 2 / 3])
    assert accumulator.SummaryMetadata("test_accuracy").plugin_data.plugin_name == "scalars"
    every_tag = set(accumulator.Tags()["tensors"])
    assert set(scalars(RECORDS[0])) | set(distributions(RECORDS[0])) | {"config"} == every_tag

    histograms = accumulator.Tensors("federated/by_client")
    assert [event.step for event in histograms] == [1, 2, 3]
    assert accumulator.SummaryMetadata("federated/by_client").plugin_data.plugin_name == "histograms"
    buckets = make_ndarray(histograms[0].tensor_proto)  # rows of [left edge, right edge, count]
    assert buckets[:, 2].sum() == 3 and buckets[0, 0] == 0.0 and buckets[-1, 1] == 0.9
    assert accumulator.SummaryMetadata("fit_metrics_by_client/train_loss").plugin_data.plugin_name == "histograms"

    (config,) = accumulator.Tensors("config")
    assert accumulator.SummaryMetadata("config").plugin_data.plugin_name == "text"
    text = make_ndarray(config.tensor_proto).item().decode()
    assert config.step == 0 and text.startswith("```json\n") and '"rounds": 3' in text


def test_tensorboard_resume_replaces_the_rounds_done_again(tmp_path):
    run_tensorboard(tmp_path, RECORDS, status="interrupted")
    # Resumed from the checkpoint after round 1: rounds 2 and 3 are done again, with other results.
    run_tensorboard(tmp_path, [record(2, 0.55), record(3, 0.8), record(4, 0.9)], start_round=2)

    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 2
    accumulator = read_tensorboard_as_served(tmp_path)
    steps, accuracies = series(accumulator, "test_accuracy")
    assert steps == [1, 2, 3, 4] and accuracies == pytest.approx([0.25, 0.55, 0.8, 0.9])
    assert [event.step for event in accumulator.Tensors("config")] == [0, 1]


def test_tensorboard_skips_odd_values_and_starts_without_on_start(tmp_path):
    tracker = TensorBoardTracker(tmp_path)  # no config, and on_round first: the start is implied
    tracker.on_round(ODD, PARAMS)
    tracker.on_end("failed")

    accumulator = read_tensorboard(tmp_path)
    assert set(accumulator.Tags()["tensors"]) == set(scalars(ODD)) | {"federated/by_client"}
    assert series(accumulator, "profile/engine/fit_s") == ([1], [1.25])


# --- MLflow ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory):
    """One SQLite tracking database for the module: creating its tables takes a second or two."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"


def run_mlflow(uri, records, *, experiment, start_round=1, status="finished", run_name="demo") -> str:
    tracker = MLflowTracker(uri, experiment=experiment, run_name=run_name, config=CONFIG)
    tracker.on_start(3, start_round)
    for line in records:
        tracker.on_round(line, PARAMS)
    tracker.on_end(status)
    return tracker.run_id


def history(client, run_id, name) -> list[tuple[int, float]]:
    return [(metric.step, metric.value) for metric in client.get_metric_history(run_id, name)]


def test_mlflow_has_every_round_the_params_and_the_status(mlflow_uri):
    import mlflow

    run_id = run_mlflow(mlflow_uri, RECORDS, experiment="plain")
    client = mlflow.MlflowClient(mlflow_uri)

    assert history(client, run_id, "test_accuracy") == [(1, 0.25), (2, 0.5), (3, 0.75)]
    assert history(client, run_id, "failures_by_kind/dropout") == [(1, 0.0), (2, 1.0), (3, 2.0)]
    assert history(client, run_id, "federated/p90") == [(1, 0.9), (2, 0.9), (3, 0.9)]
    run = client.get_run(run_id)
    assert set(run.data.metrics) == set(scalars(RECORDS[0]))
    assert run.data.params == flat_params(CONFIG) and run.data.params["server.rounds"] == "3"
    assert run.info.status == "FINISHED" and run.info.run_name == "demo"
    assert run.data.tags["fedstack.start_round"] == "1"
    assert client.get_experiment(run.info.experiment_id).name == "plain"


def test_mlflow_resume_is_a_new_run_tagged_with_its_first_round(mlflow_uri):
    import mlflow

    first = run_mlflow(mlflow_uri, RECORDS[:2], experiment="resumed", status="interrupted")
    second = run_mlflow(mlflow_uri, [record(3, 0.8)], experiment="resumed", start_round=3)
    client = mlflow.MlflowClient(mlflow_uri)

    assert client.get_run(first).info.status == "KILLED"
    resumed = client.get_run(second)
    assert resumed.info.status == "FINISHED" and resumed.data.tags["fedstack.start_round"] == "3"
    assert resumed.info.experiment_id == client.get_run(first).info.experiment_id
    assert history(client, second, "test_accuracy") == [(3, 0.8)]


def test_mlflow_skips_odd_values_and_fails_a_failed_run(mlflow_uri):
    import mlflow

    tracker = MLflowTracker(mlflow_uri, experiment="odd")  # no config, no run name, on_round first
    tracker.on_round(ODD, PARAMS)
    tracker.on_end("failed")
    run = mlflow.MlflowClient(mlflow_uri).get_run(tracker.run_id)

    assert run.data.metrics == {"count": 3.0, "epsilon": 1.5, "profile/engine/fit_s": 1.25, "personal/mean": 0.4,
                                "odd name_": 2.0}
    assert run.data.params == {} and run.info.status == "FAILED"
    assert not any(math.isnan(value) for value in run.data.metrics.values())
