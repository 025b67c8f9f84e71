"""Clustered federated learning (issue 21): IFCA's cluster choice and per-cluster averaging by hand, refusals,
and runs that recover planted groups with the same bits on local and pool."""

import numpy as np
import pytest

from crashes import straight_and_resumed
from fedstack.client import EvalResult, FitConfig, FitResult
from fedstack.clustered import IfcaServer, ifca
from fedstack.data import ClientData
from fedstack.experiment import run_config
from fedstack.plan import load_config
from fedstack.strategy import ClientUpdate


class Distance:
    """A trainer whose loss is the squared distance of the model to the mean of the client's examples, and
    whose fit steps halfway there."""

    def evaluate(self, params, x, y):
        return EvalResult(loss_sum=float(((params - x.mean(axis=0)) ** 2).sum()) * len(x), correct=None,
                          examples=len(x))

    def fit(self, params, data, config, state=None):
        target = data.x[data.train_idx].mean(axis=0)
        return FitResult(((target - params) / 2).astype(np.float32), len(data.train_idx))


def test_a_client_trains_the_model_closest_to_its_data_and_names_it():
    received = np.array([0, 0, 10, 10, 4, 4], np.float32)  # three models of two values
    data = ClientData(np.array([[9, 11], [11, 9]], np.float32), np.zeros(2, np.int64), np.arange(2), np.arange(0))
    client = ifca(3, 2)
    assert client.choose(Distance(), received, data) == 1
    result = client.fit(Distance(), received, data, FitConfig(), None)
    assert result.update.tolist() == [0, 0] and result.metrics == {"cluster": 1}  # already at its data's mean
    assert client.own_model(Distance(), received, data, None).tolist() == [10, 10]


def test_each_model_moves_by_the_mean_update_of_the_clients_that_chose_it_and_bad_names_are_refused():
    server = IfcaServer(ifca(2, 2), num_clients=4, truth=np.array([0, 0, 1, 1]))
    params = np.array([1, 1, 5, 5], np.float32)
    updates = [ClientUpdate(0, np.array([2, 0], np.float32), 1, {"cluster": 0}),
               ClientUpdate(1, np.array([-1, 3], np.float32), 3, {"cluster": 0}),
               ClientUpdate(2, np.array([1, 1], np.float32), 1, {"cluster": 1}),
               ClientUpdate(3, np.array([9, 9], np.float32), 1, {"cluster": 7})]  # no such cluster: refused
    new = server.aggregate(1, params, updates)
    assert new.tolist() == [1 + (2 - 3) / 4, 1 + 9 / 4, 6, 6]
    figures = server.round_figures()
    assert figures["clusters"] == [0, 0, 1, -1] and figures["cluster_refused"] == 1
    assert figures["cluster_ari"] == 1.0  # the three clients seen are grouped as planted
    assert server.update_size(4) == 2 and server.models == 2 and not server.one_model
    with pytest.raises(Exception, match="IFCA"):
        IfcaServer(object(), num_clients=4)



def test_a_model_no_client_chose_for_revive_rounds_becomes_the_farthest_clients_trained_model():
    """personal.ifca_revive = 2: model 1 goes unchosen in rounds 1 and 2; in round 2 it is revived as
    model 0 + the update of the client farthest (cosine) from model 0's mean update, and the idle count
    survives a checkpoint."""
    server = IfcaServer(ifca(2, 2), num_clients=3, revive=2)
    params = np.array([1, 1, 5, 5], np.float32)
    updates = [ClientUpdate(0, np.array([1, 0], np.float32), 1, {"cluster": 0}),
               ClientUpdate(1, np.array([1, 0.2], np.float32), 1, {"cluster": 0}),
               ClientUpdate(2, np.array([-1, 2], np.float32), 1, {"cluster": 0})]  # mean (1/3, 2.2/3)
    once = server.aggregate(1, params, updates)
    assert once.tolist() == pytest.approx([1 + 1 / 3, 1 + 2.2 / 3, 5, 5])
    assert "cluster_revived" not in server.round_figures()
    saved = server.state()
    again = IfcaServer(ifca(2, 2), num_clients=3, revive=2)
    again.load_state(saved)
    twice = again.aggregate(2, once, updates)
    # cosines with the mean (1/3, 2.2/3): client 0 0.41, client 1 0.58, client 2 0.63 -> client 0 is the farthest
    assert twice.tolist() == pytest.approx([1 + 2 / 3, 1 + 4.4 / 3, 1 + 1 / 3 + 1, 1 + 2.2 / 3])
    assert again.round_figures()["cluster_revived"] == [1, 0] and again.idle.tolist() == [0, 0]
    never = IfcaServer(ifca(2, 2), num_clients=3)  # revive = 0, the paper's IFCA: a dead model stays dead
    assert never.aggregate(2, never.aggregate(1, params, updates), updates)[2:].tolist() == [5, 5]


RUN = ["data.name=digits", "data.num_clients=8", "server.clients_per_round=8", "server.rounds=4",
       "data.partition=clusters", "data.clusters=2", "data.cluster_transform=permute_labels", "model.name=logreg",
       "client.epochs=2", "server.strategy=ifca", "personal.clusters=2"]


def test_ifca_recovers_planted_groups_with_the_same_bits_on_local_and_pool(tmp_path):
    runs = {engine: run_config(load_config(None, [*RUN, f"engine.name={engine}", "engine.workers=2"]),
                               tmp_path / engine) for engine in ("local", "pool")}
    local, pool = runs["local"], runs["pool"]
    strip = [[{k: v for k, v in r.items() if k not in ("wall_time_s", "profile")} for r in h.rounds]
             for h in runs.values()]
    assert np.array_equal(local.params, pool.params) and strip[0] == strip[1]
    last = local.rounds[-1]
    assert last["cluster_ari"] == 1.0 and sorted(set(last["clusters"])) == [0, 1]
    assert "federated" not in last and last["personal"]["clients"] == 8  # no one global model to judge
    assert last["test_accuracy"] > 0.8  # each client's own cluster model, summed over the clients
    size = local.params.size // 2
    assert all(r["bytes_down"] == 8 * 4 * 2 * size and r["bytes_up"] == 8 * 4 * size for r in local.rounds)
    # the Python API: each client's cluster, and its own model is that cluster's
    assert local.clusters == dict(enumerate(last["clusters"])) and sorted(local.personal) == list(range(8))
    models = local.params.reshape(2, size)
    assert all(np.array_equal(local.personal[i], models[c]) for i, c in local.clusters.items())


def test_a_resumed_ifca_run_keeps_its_clusters(tmp_path):
    straight, resumed = straight_and_resumed(load_config(None, [*RUN, "server.rounds=3"]), tmp_path)
    assert np.array_equal(resumed.params, straight.params) and resumed.rounds[-1] == {
        **straight.rounds[-1], "wall_time_s": resumed.rounds[-1]["wall_time_s"]}


def test_complete_linkage_splits_two_planted_directions_by_hand():
    from fedstack.clustered import complete_linkage_bipartition, cosine_similarities

    rows = np.array([[1, 0.1], [1, -0.1], [-0.1, 1], [0.9, 0], [0, 1.2]], np.float64)
    assert complete_linkage_bipartition(cosine_similarities(rows)).tolist() == [0, 0, 1, 0, 1]
    s = cosine_similarities(rows)
    np.testing.assert_allclose(np.diag(s), 1.0)
    assert s[0, 2] == pytest.approx((1 * -0.1 + 0.1 * 1) / (np.hypot(1, 0.1) * np.hypot(0.1, 1)))


def test_cfl_splits_a_stalled_cluster_by_its_members_update_directions():
    from fedstack.clustered import CflServer

    server = CflServer(num_clients=4, model_size=2, eps1=0.5, eps2=0.9, warmup=1, min_size=2,
                       truth=np.array([0, 0, 1, 1]))
    params = np.zeros(2, np.float32)
    # two pairs pulling opposite ways: the mean stalls (norm 0) while each update is long (norm 1)
    updates = [ClientUpdate(c, np.array(v, np.float32), 1) for c, v in
               enumerate([[1, 0], [1, 0.01], [-1, 0], [-1, -0.01]])]
    new = server.aggregate(1, params, updates)
    figures = server.round_figures()
    assert figures["clusters"] == [0, 0, 1, 1] and figures["cluster_splits"] == 1 and figures["cluster_ari"] == 1.0
    assert new.shape == (4,) and server.models == 2 and server.model_of(3) == (2, 4)
    assert np.allclose(new[:2], new[2:])  # both halves continue from the cluster's model
    # a round that misses a member does not split, and a cluster of min_size clients never does
    server = CflServer(num_clients=4, model_size=2, eps1=0.5, eps2=0.9, warmup=1)
    server.aggregate(1, params, updates[:3])
    assert server.round_figures()["cluster_splits"] == 0


def test_cfl_recovers_planted_groups_and_sends_each_client_its_clusters_model_only(tmp_path):
    cfl = [*RUN, "server.strategy=cfl", "server.rounds=7", "personal.cfl_warmup=3", "engine.workers=2"]
    history = run_config(load_config(None, [*cfl, "engine.name=local"]), tmp_path / "local")
    pool = run_config(load_config(None, [*cfl, "engine.name=pool"]), tmp_path / "pool")
    assert np.array_equal(history.params, pool.params)
    assert [r["personal"] for r in history.rounds] == [r["personal"] for r in pool.rounds]
    last = history.rounds[-1]
    assert last["cluster_ari"] == 1.0 and history.params.size == 2 * history.rounds[0]["bytes_up"] // (8 * 4)
    assert all(r["bytes_down"] == r["bytes_up"] for r in history.rounds)  # one model each way, per client
    assert last["personal"]["mean"] > 0.85
    with pytest.raises(Exception, match="server.clients_per_round"):
        load_config(None, [*RUN, "server.strategy=cfl", "server.clients_per_round=4"])
