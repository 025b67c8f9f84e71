"""RayEngine on a real Ray: the same bits as local and pool, killed actors, two nodes.

Each Ray runs in network namespaces of its own (see tests/ray_runs.py): two subprocesses on local
Rays (one the engine starts, one of our own), and meanwhile one on a two-node cluster (most of a Ray's
start is waiting); tests read their reports.
"""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import ray_runs
from fedstack.plan import load_config
from fedstack.engine import RayEngine, make_engine
from fedstack.errors import ConfigError

WHY_NOT = ray_runs.namespaces_available()
needs_namespaces = pytest.mark.skipif(WHY_NOT is not None, reason=f"Ray runs in network namespaces: {WHY_NOT}")


def test_engine_address_is_for_ray_only():
    with pytest.raises(ConfigError, match="engine.address"):
        load_config(None, ["engine.name=pool", "engine.address=10.0.0.1:6379"])
    config = load_config(None, ["engine.name=ray", "engine.address=10.0.0.1:6379", "engine.workers=4"])
    engine = make_engine(config.engine.name, config.engine.workers, config.engine.address)
    assert isinstance(engine, RayEngine) and (engine.workers, engine.address) == (4, "10.0.0.1:6379")
    with pytest.raises(ValueError, match="address"):
        make_engine("local", 0, "10.0.0.1:6379")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The two-node run, started in the background (a future of its results)."""
    with ThreadPoolExecutor(1) as pool:
        yield pool.submit(ray_runs.run_cluster, tmp_path_factory.mktemp("cluster"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, cluster):
    return ray_runs.run_engines(tmp_path_factory.mktemp("ray"))


@needs_namespaces
def test_same_seed_gives_identical_bits_on_local_pool_and_ray(runs):
    """SCAFFOLD's client state, topk's error feedback, central and federated evaluation: all through Ray."""
    local = runs["local"]
    assert len(local["rounds"]) == 3 and "test_accuracy" in local["rounds"][-1]
    for engine in ("pool", "ray"):
        np.testing.assert_array_equal(np.array(runs[engine]["params"]), np.array(local["params"]))
        assert runs[engine]["rounds"] == local["rounds"], engine
    assert runs["ray_shut_down"]  # the engine stopped the Ray it had started


@needs_namespaces
def test_batchnorm_statistics_give_the_same_bits_on_ray(runs):
    params, accuracies = ray_runs.batchnorm_run("local")
    np.testing.assert_array_equal(np.array(runs["batchnorm"]["params"], np.float32), params)
    assert runs["batchnorm"]["accuracies"] == accuracies


@needs_namespaces
def test_a_users_own_regression_metrics_and_lr_schedule_give_the_same_bits_on_ray(runs):
    """Issue 20's user parts named in TOML (a BatchNorm regression network, its loader, metrics and their
    aggregation, a cosine schedule, round-dependent epochs) on local, pool and a Ray of our own."""
    user = runs["user"]
    last = user["local"]["rounds"][-1]
    assert last["test_accuracy"] is None and set(last["test_metrics"]) == {"mae", "share_within_half"}
    assert user["local"]["rounds"][0]["test_loss"] > last["test_loss"]  # it learns
    for engine in ("pool", "ray"):
        np.testing.assert_array_equal(np.array(user[engine]["params"]), np.array(user["local"]["params"]))
        assert user[engine]["rounds"] == user["local"]["rounds"], engine


@needs_namespaces
def test_personalised_and_clustered_training_give_the_same_bits_on_ray(runs):
    """FedRep's personal heads (client state through Ray) and CFL's per-cluster slices (task spans)."""
    for name, engines in runs["personal"].items():
        np.testing.assert_array_equal(np.array(engines["ray"]["params"]), np.array(engines["local"]["params"]))
        assert engines["ray"]["rounds"] == engines["local"]["rounds"], name
        assert engines["local"]["rounds"][-1]["personal"]["clients"] == 6
    assert max(runs["personal"]["cfl"]["local"]["rounds"][-1]["clusters"]) >= 1  # a split happened


def test_coded_training_gives_the_same_bits_on_ray(runs):
    """Coded training's round 0 (each client's parity set) and its deadline-cut rounds, through Ray."""
    engines = runs["coded"]
    np.testing.assert_array_equal(np.array(engines["ray"]["params"]), np.array(engines["local"]["params"]))
    assert engines["ray"]["rounds"] == engines["local"]["rounds"]
    assert engines["local"]["rounds"][0]["parity_clients"] == 6


def test_contribution_scores_are_the_same_on_ray(runs):
    """Each coalition's model evaluated on the validation rows by Ray's actors, as on the local engine."""
    engines = runs["contribution"]
    assert engines["ray"]["rounds"] == engines["local"]["rounds"]
    assert set(engines["local"]["rounds"][-1]["contribution"]["methods"]) == {"gtg", "loo"}


@needs_namespaces
def test_a_killed_actor_loses_only_its_task_and_the_run_ends_with_the_same_bits(cluster):
    """On the two-node cluster: deadline, over-selection, dropouts, and an actor that kills itself (kill -9)."""
    result = cluster.result()
    assert result["killed_marker"]  # an actor really died mid-task
    np.testing.assert_array_equal(np.array(result["killed"]["params"]), np.array(result["local"]["params"]))
    assert result["killed"]["rounds"] == result["local"]["rounds"]
    assert sum(r["failures_by_kind"]["error"] for r in result["killed"]["rounds"]) == 0


@needs_namespaces
def test_a_task_whose_actor_always_dies_fails_after_three_attempts_and_a_client_error_is_not_retried(runs):
    errors = [o["error"] for o in runs["doomed"]]
    assert errors == [None, None, None, "ValueError: no data", None, "worker died 3 times running it", None, None]
    expected = runs["first_examples"]
    assert [o["value"] for o in runs["doomed"] if o["error"] is None] == [expected[i] for i in (0, 1, 2, 4, 6, 7)]
    assert runs["doomed_tasks_run"] == 7  # client 3's failure came back once, and was not run again


@needs_namespaces
def test_a_consumer_that_stops_early_leaves_the_engine_ready_for_the_next_run(runs):
    assert runs["after_break"] == [{"client": i, "error": None, "value": runs["first_examples"][i]}
                                   for i in range(3)]


@needs_namespaces
def test_an_actor_that_cannot_start_stops_the_run_with_the_reason(runs):
    assert runs["broken"] == "a Ray worker could not start: ImportError: no such model library"
    assert runs["too_many"] == ("config key 'engine.workers': 3 workers of one CPU each, but the Ray cluster "
                                "started here has 2 CPUs")


@needs_namespaces
def test_two_ray_nodes_share_the_work_and_give_the_same_bits(cluster):
    """`ray start --head` and `ray start --address` in two namespaces joined by a veth pair."""
    result = cluster.result()
    assert set(result["tasks_by_node"]) == {ray_runs.HEAD, ray_runs.WORKER}
    np.testing.assert_array_equal(np.array(result["ray"]["params"]), np.array(result["local"]["params"]))
    assert result["ray"]["rounds"] == result["local"]["rounds"]
