"""Planted clusters (data.partition = "clusters") and the adjusted Rand index that scores a clustering."""

import dataclasses
import pickle

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from both_engines import run_on_both_engines
from fedstack.clustering import adjusted_rand_index
from fedstack.data import FederatedDataset, build_dataset, plant_clusters
from fedstack.data.clusters import contiguous_groups, label_permutations
from fedstack.errors import ConfigError, DataError
from fedstack.plan import load_config

adjusted_rand_score = pytest.importorskip("sklearn.metrics").adjusted_rand_score


def build(partition="clusters", num_clients=10, seed=0, **kw):
    return build_dataset("digits", num_clients=num_clients, partition=partition, alpha=0.5, seed=seed, holdout=0.2,
                         **kw)


def members(fed, group):
    """Every training and held-out index of the clients in `group`."""
    clients = np.flatnonzero(fed.groups == group)
    return np.concatenate([np.concatenate([fed.train_idx[i], fed.holdout_idx[i]]) for i in clients])


def test_client_i_is_in_group_i_k_over_n():
    fed = build(num_clients=10, clusters=4)
    assert fed.groups.dtype == np.int64
    np.testing.assert_array_equal(fed.groups, [0, 0, 0, 1, 1, 2, 2, 2, 3, 3])
    np.testing.assert_array_equal(contiguous_groups(7, 7), np.arange(7))
    assert build(partition="iid").groups is None


def test_rotate_turns_each_groups_images_by_its_quarter_turns():
    plain, fed = build(partition="iid"), build(clusters=4)
    # the same IID dealing (the partition stream), the same labels, a new x
    assert fed.train_idx == plain.train_idx and fed.holdout_idx == plain.holdout_idx
    assert np.array_equal(fed.y, plain.y) and fed.x is not plain.x
    assert fed.x.shape == plain.x.shape and fed.x.dtype == plain.x.dtype
    for g in range(4):
        idx = members(fed, g)
        np.testing.assert_array_equal(fed.x[idx], np.rot90(plain.x[idx], g, axes=(-2, -1)))
        if g:
            assert not np.array_equal(fed.x[idx], plain.x[idx])
    client = fed.client(int(np.flatnonzero(fed.groups == 1)[0]))
    i = client.train_idx[0]
    np.testing.assert_array_equal(client.x[i, 0], np.rot90(plain.x[i, 0]))


def test_rotate_cuts_the_test_set_into_k_slices():
    plain, fed = build(partition="iid"), build(clusters=3)
    n = len(fed.y_test)
    slices = np.arange(n) * 3 // n
    np.testing.assert_array_equal(fed.y_test, plain.y_test)
    for g in range(3):
        at = slices == g
        assert abs(at.sum() - n / 3) < 1
        np.testing.assert_array_equal(fed.x_test[at], np.rot90(plain.x_test[at], g, axes=(-2, -1)))


def test_permute_labels_maps_each_group_through_one_permutation():
    plain, fed = build(partition="iid"), build(clusters=4, cluster_transform="permute_labels")
    assert fed.train_idx == plain.train_idx and np.array_equal(fed.x, plain.x)
    maps = []
    for g in range(4):
        idx = members(fed, g)
        mapping = np.full(10, -1)
        mapping[plain.y[idx]] = fed.y[idx]
        np.testing.assert_array_equal(mapping[plain.y[idx]], fed.y[idx])  # one label for each class
        assert sorted(mapping) == list(range(10))  # a permutation of the classes
        maps.append(mapping)
        n = len(fed.y_test)
        at = np.arange(n) * 4 // n == g  # the test set's slice g, mapped alike
        np.testing.assert_array_equal(fed.y_test[at], mapping[plain.y_test[at]])
    np.testing.assert_array_equal(maps[0], np.arange(10))  # group 0 keeps its labels
    assert len({tuple(m) for m in maps}) == 4


def test_same_seed_same_bits_other_seed_other_dealing():
    for transform in ("rotate", "permute_labels"):
        a, b, c = (build(seed=s, clusters=4, cluster_transform=transform) for s in (3, 3, 4))
        for key in ("x", "y", "x_test", "y_test", "groups"):
            np.testing.assert_array_equal(getattr(a, key), getattr(b, key))
        assert a.train_idx == b.train_idx and a.holdout_idx == b.holdout_idx
        assert a.train_idx != c.train_idx
        np.testing.assert_array_equal(a.groups, c.groups)
    perms = [label_permutations(4, 10, np.random.default_rng(s)) for s in (3, 3, 4)]
    assert np.array_equal(perms[0], perms[1]) and not np.array_equal(perms[0], perms[2])


def test_groups_survive_with_arrays_pickling_and_replace():
    fed = build(clusters=4)
    light = fed.with_arrays({k: a.copy() for k, a in fed.arrays().items()})
    np.testing.assert_array_equal(light.groups, fed.groups)
    back = pickle.loads(pickle.dumps(fed))
    np.testing.assert_array_equal(back.groups, fed.groups)
    assert back.train_idx == fed.train_idx
    empty = dataclasses.replace(fed, **{k: a[:0] for k, a in fed.arrays().items()})  # what the pool engine ships
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(empty)).groups, fed.groups)
    with pytest.raises(DataError, match="groups"):
        dataclasses.replace(fed, groups=fed.groups[:-1])


def test_plant_clusters_on_arrays_of_n_h_w():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 5, 5)), rng.integers(0, 3, 40)
    given = x.copy()
    fed = FederatedDataset.from_arrays(x, y, x[:8], y[:8], num_clients=4, partition="clusters", clusters=2, seed=1)
    assert fed.x is not x and np.array_equal(x, given)  # the caller's array is left alone
    for i in range(4):
        idx = fed.train_idx[i]
        np.testing.assert_array_equal(fed.x[idx], np.rot90(x[idx], int(fed.groups[i]), axes=(1, 2)))
    np.testing.assert_array_equal(fed.x_test[4:], np.rot90(x[4:8], 1, axes=(1, 2)))
    parts = fed.train_idx
    assert plant_clusters(x, y, x[:0], y[:0], parts, 2, "permute_labels", 3, rng)[0] is x  # x shared, not copied


def test_run_on_local_and_pool_gives_the_same_rounds(tmp_path):
    local, _ = run_on_both_engines(["data.name=digits", "data.partition=clusters", "data.clusters=4",
                                    "data.num_clients=8", "server.clients_per_round=8", "server.rounds=1",
                                    "model.name=logreg", "eval.federated=false"], tmp_path)
    assert len(local.rounds) == 1


def config_error(overrides):
    with pytest.raises(ConfigError) as caught:
        load_config(None, ["data.name=digits", "data.partition=clusters", "data.num_clients=8",
                           "server.clients_per_round=8", *overrides])
    return caught.value.key


def test_bad_keys_are_refused_naming_the_key():
    assert config_error(["data.clusters=9"]) == "data.clusters"  # more groups than clients
    assert config_error(["data.clusters=5"]) == "data.clusters"  # rotate has 4 angles
    assert config_error(["data.clusters=0"]) == "data.clusters"
    assert config_error(["data.cluster_transform=flip"]) == "data.cluster_transform"
    assert config_error(["data.cluster_transform=permute_labels", "model.task=regression",
                         "model.name=mypkg.models:make_model"]) == "data.cluster_transform"
    load_config(None, ["data.name=digits", "data.partition=clusters", "data.num_clients=8",
                       "server.clients_per_round=8", "data.clusters=8", "data.cluster_transform=permute_labels"])
    rng = np.random.default_rng(0)
    with pytest.raises(ConfigError) as caught:  # rotate needs square images
        FederatedDataset.from_arrays(rng.normal(size=(20, 3, 4)), rng.integers(0, 2, 20), None, None,
                                     num_clients=4, partition="clusters", clusters=2)
    assert caught.value.key == "data.cluster_transform"
    with pytest.raises(ConfigError) as caught:  # no classes to permute
        FederatedDataset.from_arrays(rng.normal(size=(20, 4, 4)), rng.normal(size=20), None, None, num_clients=4,
                                     partition="clusters", cluster_transform="permute_labels", targets="values")
    assert caught.value.key == "data.cluster_transform"
    regression = FederatedDataset.from_arrays(rng.normal(size=(20, 4, 4)), rng.normal(size=20), None, None,
                                              num_clients=4, partition="clusters", clusters=2, targets="values")
    np.testing.assert_array_equal(regression.groups, [0, 0, 1, 1])
    for kw, key in (({"clusters": 5}, "data.clusters"), ({"clusters": 11}, "data.clusters"),
                    ({"cluster_transform": "flip"}, "data.cluster_transform")):
        with pytest.raises(ConfigError) as caught:
            build(**kw)
        assert caught.value.key == key
    for name in ("synthetic", "shakespeare"):  # data that comes per client, or text: nothing to plant
        with pytest.raises(ConfigError) as caught:
            build_dataset(name, num_clients=4, partition="clusters", alpha=0.5, seed=0)
        assert caught.value.key == "data.partition"


def test_ari_of_a_hand_computed_case():
    # pairs together: 2 in both, 6 in the truth, 3 in the prediction, of 15; expected 6·3/15 = 1.2
    # ARI = (2 − 1.2) / ((6 + 3)/2 − 1.2) = 8/33
    assert adjusted_rand_index([0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 2, 2]) == pytest.approx(8 / 33, abs=1e-12)
    assert adjusted_rand_index(["a", "a", "b", "b"], [1, 1, 0, 0]) == 1.0  # any labels, renamed
    assert adjusted_rand_index([0, 0, 1, 1], [0, 1, 0, 1]) == pytest.approx(-0.5)


def test_ari_edge_cases_agree_with_scikit_learn():
    cases = [([3, 1, 2, 1, 3], [3, 1, 2, 1, 3]), ([0] * 6, [0] * 6), ([5] * 6, [1] * 6), (list(range(5)), [7] * 5),
             ([0] * 5, list(range(5))), (list(range(5)), list(range(5))), ([1], [2]), ([], [])]
    for true, pred in cases:
        assert adjusted_rand_index(true, pred) == pytest.approx(adjusted_rand_score(true, pred), abs=1e-12)
    assert adjusted_rand_index([0] * 6, [0] * 6) == 1.0
    with pytest.raises(ValueError, match="length"):
        adjusted_rand_index([0, 1], [0])


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 60).flatmap(lambda n: st.tuples(st.lists(st.integers(0, 5), min_size=n, max_size=n),
                                                      st.lists(st.integers(-2, 8), min_size=n, max_size=n))))
def test_ari_equals_scikit_learns_on_random_labelings(labelings):
    true, pred = labelings
    assert adjusted_rand_index(true, pred) == pytest.approx(adjusted_rand_score(true, pred), abs=1e-12)
