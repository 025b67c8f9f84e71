"""Personalised federated learning (issue 21): partial sharing (FedPer, FedRep, FedBN), Ditto, local-only —
the split of the parameters, each client half by hand, the server half, and whole runs."""

import json

import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st

from crashes import straight_and_resumed
from fedstack.client import FitConfig, FitResult, TorchTrainer
from fedstack.data import ClientData
from fedstack.errors import ConfigError
from fedstack.experiment import run_config
from fedstack.params import spec_of
from fedstack.personal import (APFL, STATE_KEY, Ditto, FedRep, Freeze, Personalization, Split, batchnorm_split,
                               everything, first_personal, head_split)
from fedstack.plan import load_config, personalization_of
from fedstack.store import RunStore
from fedstack.strategy import ClientUpdate, Personalized

# A model's tensors as TorchTrainer lays them out: parameters in order, then floating buffers.
SPEC = spec_of([("body.0.weight", (3, 2)), ("body.0.bias", (3,)), ("body.1.weight", (3,)), ("body.1.bias", (3,)),
                ("head.weight", (2, 3)), ("head.bias", (2,)),
                ("body.1.running_mean", (3,)), ("body.1.running_var", (3,))])


def test_splits_by_hand():
    # offsets: body.0 [0, 9), body.1 params [9, 15), head [15, 23), body.1 buffers [23, 29)
    assert head_split(SPEC) == Split(29, ((15, 23),))
    assert head_split(SPEC, 2) == Split(29, ((9, 29),))  # body.1 and the head, its buffers after: one stretch
    assert batchnorm_split(SPEC) == Split(29, ((9, 15), (23, 29)))
    assert everything(SPEC) == Split(29, ((0, 29),))
    split = head_split(SPEC)
    assert split.shared_size == 21 and split.personal_index().tolist() == list(range(15, 23))
    with pytest.raises(ValueError, match="head_layers"):
        head_split(SPEC, 3)  # three modules: at least one must be shared
    with pytest.raises(ValueError, match="BatchNorm"):
        batchnorm_split(spec_of([("fc.weight", (2, 2))]))


@given(st.integers(1, 40).flatmap(lambda n: st.tuples(st.just(n), st.lists(st.booleans(), min_size=n, max_size=n))))
def test_a_split_joins_what_it_splits(case):
    n, personal = case
    stretches, start = [], None
    for i, p in enumerate([*personal, False]):
        if p and start is None:
            start = i
        elif not p and start is not None:
            stretches.append((start, i))
            start = None
    split = Split(n, tuple(stretches))
    whole = np.arange(n, dtype=np.float32)
    mask = split.mask()
    assert mask.tolist() == personal and split.shared_size == n - sum(personal)
    assert np.array_equal(split.join(whole[~mask], whole[mask]), whole)


class Shift:
    """A trainer whose fit moves every weight by +1 per epoch (an update it is easy to follow by hand)."""

    def fit(self, params, data, config, state=None):
        return FitResult(np.full_like(params, float(config.epochs)), 7, {"train_loss": 0.5})


def test_partial_sharing_sends_the_shared_change_and_keeps_the_personal_part():
    split = Split(5, ((3, 5),))
    received, personal = np.array([1, 2, 3], np.float32), np.array([10, 20], np.float32)
    result = Personalization(split).fit(Shift(), received, None, FitConfig(epochs=2), personal)
    assert result.update.tolist() == [2, 2, 2] and result.state.tolist() == [12, 22] and result.num_examples == 7
    assert Personalization(split).start(received, personal).tolist() == [1, 2, 3, 10, 20]
    assert Personalization(split).own_model(None, received, None, personal).tolist() == [1, 2, 3, 10, 20]


def test_the_server_half_averages_the_shared_part_only_and_hands_out_the_initial_personal_part():
    split = Split(4, ((1, 2),))
    strategy = Personalized(Personalization(split), FitConfig())
    params = np.array([1, 5, 1, 1], np.float32)
    assert strategy.broadcast(params).tolist() == [1, 1, 1]
    updates = [ClientUpdate(0, np.array([3, 0, 3], np.float32), 1), ClientUpdate(1, np.array([0, 3, 0], np.float32), 2)]
    assert strategy.aggregate(1, params, updates).tolist() == [2, 5, 3, 2]  # (3·1 + 0·2)/3 = 1, (0 + 6)/3 = 2
    assert strategy.first_state(params)[STATE_KEY].tolist() == [5]
    tasks = strategy.configure(3, params, [4, 9])
    assert [t.client_id for t in tasks] == [4, 9] and tasks[0].config.personal is strategy.personal
    # Ditto's personal model starts as the global model the client received
    assert first_personal(Ditto(Split(3)), np.ones(3, np.float32), np.zeros(3, np.float32)).tolist() == [1, 1, 1]


def regression_trainer():
    torch.manual_seed(0)
    return TorchTrainer(torch.nn.Linear(2, 1), task="regression")


def one_batch(x, y):
    return ClientData(x, y, np.arange(len(y)), np.arange(0))


def test_ditto_by_hand():
    """One full-batch step each: w' = w − η∇F(w) is sent; v' = v − η(∇F(v) + λ(v − w)) is kept."""
    x = np.array([[1, 0], [0, 2]], np.float32)
    y = np.array([1, -1], np.float32)
    trainer = regression_trainer()
    w = np.array([0.5, 0.5, 0.0], np.float32)  # weight (1×2) then bias
    v = np.array([1.0, -1.0, 0.5], np.float32)
    lr, lam = 0.1, 0.5
    config = FitConfig(local_steps=1, batch_size=2, lr=lr)

    def grad(p):  # mean squared error over the batch: (2/n) Σ (x·a + b − y)·[x, 1]
        residual = x @ p[:2] + p[2] - y
        return np.concatenate([2 * x.T @ residual / 2, [2 * residual.sum() / 2]])

    result = Ditto(Split(3), lam=lam).fit(trainer, w, one_batch(x, y), config, v)
    np.testing.assert_allclose(result.update, -lr * grad(w), rtol=1e-6)
    np.testing.assert_allclose(result.state, v - lr * (grad(v) + lam * (v - w)), rtol=1e-6)


def test_apfl_by_hand():
    """One full-batch step: w' = w − η∇f(w); v' = v − ηα∇f(v̄); α' = α − η⟨v − w, ∇f(v̄)⟩, v̄ = αv + (1 − α)w."""
    x = np.array([[1, 0], [0, 2]], np.float32)
    y = np.array([1, -1], np.float32)
    w = np.array([0.5, 0.5, 0.0], np.float32)
    v = np.array([1.0, -1.0, 0.5], np.float32)
    lr, alpha = 0.1, 0.25

    def grad(p):
        residual = x @ p[:2] + p[2] - y
        return np.concatenate([x.T @ residual, [residual.sum()]])  # (2/n)·Σ with n = 2

    mixed = alpha * v + (1 - alpha) * w
    result = APFL(Split(3), alpha=alpha).fit(regression_trainer(), w, one_batch(x, y),
                                            FitConfig(local_steps=1, batch_size=2, lr=lr), np.append(v, alpha))
    np.testing.assert_allclose(result.update, -lr * grad(w), rtol=1e-5)
    np.testing.assert_allclose(result.state[:3], v - lr * alpha * grad(mixed), rtol=1e-5)
    assert result.state[3] == pytest.approx(alpha - lr * np.dot(v - w, grad(mixed)), rel=1e-5)
    assert result.metrics["alpha"] == pytest.approx(result.state[3])
    client = APFL(Split(3), alpha=alpha)
    assert client.first(w, w).tolist() == [*w.tolist(), alpha]
    np.testing.assert_allclose(client.own_model(None, w, None, result.state),
                               result.state[3] * result.state[:3] + (1 - result.state[3]) * w, rtol=1e-6)


def test_fedrep_trains_the_head_with_the_body_frozen_then_the_body_with_the_head_frozen():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    trainer = TorchTrainer(model)
    split = head_split(trainer.spec)
    start = trainer.get_params()
    mask = split.mask()
    rng = np.random.default_rng(0)
    data = one_batch(rng.normal(size=(8, 4)).astype(np.float32), rng.integers(0, 2, 8))
    frozen = FitConfig(local_steps=3, batch_size=4, lr=0.5, terms=(Freeze(split, personal=False),))
    moved = trainer.fit(start, data, frozen).update  # the body frozen: only the head moves
    assert np.all(moved[~mask] == 0) and np.any(moved[mask] != 0)

    fedrep = FedRep(split, head_epochs=2)
    result = fedrep.fit(trainer, start[~mask], data, FitConfig(epochs=1, batch_size=4, lr=0.5), start[mask])
    head = trainer.fit(start, data, FitConfig(epochs=2, batch_size=4, lr=0.5,
                                              terms=(Freeze(split, personal=False),))).update
    tuned = start + head
    body = trainer.fit(tuned, data, FitConfig(epochs=1, batch_size=4, lr=0.5, terms=(Freeze(split, personal=True),)))
    assert np.array_equal(result.state, tuned[mask])  # the head does not move while the body trains
    assert np.array_equal(result.update, body.update[~mask]) and np.any(result.update != 0)


RUN = ["data.name=digits", "data.num_clients=8", "data.partition=shards", "server.clients_per_round=4",
       "server.rounds=3", "model.name=mlp", "seed=3"]


def rounds_of(history):
    return [{k: v for k, v in r.items() if k not in ("wall_time_s", "profile")} for r in history.rounds]


@pytest.mark.parametrize("strategy", ["fedper", "fedrep", "ditto", "apfl"])
def test_personalised_runs_give_the_same_bits_on_local_and_pool_and_judge_each_clients_own_model(tmp_path, strategy):
    histories = {engine: run_config(load_config(None, [*RUN, f"server.strategy={strategy}", "personal.head_epochs=2",
                                                       f"engine.name={engine}", "engine.workers=2"]), tmp_path / engine)
                 for engine in ("local", "pool")}
    local, pool = histories["local"], histories["pool"]
    assert np.array_equal(local.params, pool.params) and rounds_of(local) == rounds_of(pool)
    last = local.rounds[-1]
    assert last["personal"]["clients"] == 8 and last["federated"]["clients"] == 8
    by_client = last["personal"]["by_client"]  # each client's own figure, beside the global model's
    assert sorted(by_client, key=int) == [str(i) for i in range(8)] == sorted(last["federated"]["by_client"], key=int)
    assert np.mean(list(by_client.values())) == pytest.approx(last["personal"]["mean"])
    # two classes per client: each client's own model beats the one global model on its own data
    # (APFL's own model starts mostly global, α = 0.25, and learns its mix: a smaller lead after three rounds)
    margin = 0.05 if strategy == "apfl" else 0.2
    assert last["personal"]["mean"] > last["federated"]["mean"] + margin, (last["personal"], last["federated"])
    summary = json.loads((tmp_path / "local" / "summary.json").read_text())
    assert summary["final"]["personal"] == last["personal"]
    store = RunStore(tmp_path / "local" / "store.sqlite")
    try:
        kept = [store.get(cid) for cid in range(8)]
    finally:
        store.close()
    assert any(s is not None for s in kept)
    size = local.params.size
    personal_size = {"ditto": size, "apfl": size + 1}.get(strategy, 200 * 10 + 10)  # mlp's head: 200 → 10
    assert all(s[STATE_KEY].shape == (personal_size,) for s in kept if s is not None)
    # the Python API: each client's own model, by client id (FedPer, FedRep: the global body with its head)
    assert sorted(local.personal) == list(range(8)) and not local.clusters
    for cid, state in enumerate(kept):
        if state is not None and strategy in ("fedper", "fedrep"):
            assert np.array_equal(local.personal[cid][-personal_size:], state[STATE_KEY])
            assert np.array_equal(local.personal[cid][:-personal_size], local.params[:-personal_size])
        elif state is not None and strategy == "ditto":
            assert np.array_equal(local.personal[cid], state[STATE_KEY])
    # only the shared part travels, each way
    shared = size if strategy in ("ditto", "apfl") else size - personal_size
    assert last["bytes_down"] == last["sampled"] * 4 * shared and last["bytes_up"] == last["clients"] * 4 * shared


def test_a_resumed_personalised_run_keeps_each_clients_personal_part(tmp_path):
    straight, resumed = straight_and_resumed(load_config(None, [*RUN, "server.strategy=fedper"]), tmp_path)
    assert np.array_equal(resumed.params, straight.params)
    assert resumed.rounds[-1]["personal"] == straight.rounds[-1]["personal"]


def test_local_only_sends_nothing_and_fedbn_keeps_batchnorm_on_each_client(tmp_path):
    alone = run_config(load_config(None, [*RUN, "server.strategy=local_only", "server.rounds=2"]), tmp_path / "alone")
    assert all(r["bytes_up"] == 0 and r["bytes_down"] == 0 for r in alone.rounds)
    assert alone.rounds[-1]["personal"]["mean"] > 0.5  # two classes each, alone
    (tmp_path / "bnpkg.py").write_text(
        "import torch\n\ndef make_model():\n    return torch.nn.Sequential(torch.nn.Flatten(), "
        "torch.nn.Linear(64, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(), torch.nn.Linear(16, 10))\n")
    import os
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        bn = run_config(load_config(None, [*RUN, "server.strategy=fedbn", 'model.name="bnpkg:make_model"',
                                           "server.rounds=2"]), tmp_path / "bn")
    finally:
        os.chdir(cwd)
    size = bn.params.size
    batchnorm = 4 * 16  # weight, bias, running mean and variance of 16 features
    assert bn.rounds[-1]["bytes_up"] == bn.rounds[-1]["clients"] * 4 * (size - batchnorm)


@pytest.mark.parametrize("overrides, key", [
    (["server.strategy=fedbn"], "server.strategy"),  # mlp has no BatchNorm
    (["server.strategy=fedper", "personal.head_layers=5"], "personal.head_layers"),
    (["server.strategy=fedrep", "personal.head_epochs=0"], "personal.head_epochs"),
])
def test_bad_personal_settings_name_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        run_config(load_config(None, [*RUN, *overrides]), None)


def test_the_shared_part_alone_is_clipped_noised_and_securely_summed(tmp_path):
    """Client DP and secure aggregation act on what is sent: the shared part (the personal part never leaves)."""
    fedper = [*RUN, "server.strategy=fedper", "server.rounds=2", "privacy.clip_norm=100"]
    clipped = run_config(load_config(None, [*fedper, 'codec.pipeline=["clip"]']), tmp_path / "clip")
    secure = run_config(load_config(None, [*fedper, 'codec.pipeline=["clip", "secagg"]']), tmp_path / "secagg")
    # the same mean of the shared part, but for secure aggregation's fixed-point rounding (2**-16)
    assert np.allclose(secure.params, clipped.params, atol=1e-3) and not np.array_equal(secure.params, clipped.params)
    shared = clipped.params.size - (200 * 10 + 10)
    last = clipped.rounds[-1]
    assert last["bytes_up"] == last["clients"] * 4 * shared
    noised = run_config(load_config(None, [*RUN, "server.strategy=fedrep", "server.rounds=2", "privacy.mode=local",
                                           "privacy.noise_multiplier=0.5", "privacy.clip_norm=1.0",
                                           'codec.pipeline=["clip", "gaussian"]']), tmp_path / "dp")
    assert np.isfinite(noised.rounds[-1]["epsilon"]) and noised.rounds[-1]["bytes_up"] == last["clients"] * 4 * shared
    # a compression codec shrinks what is sent of the shared part: 8-bit QSGD, about a quarter of its bytes
    squeezed = run_config(load_config(None, [*fedper, 'codec.pipeline=["qsgd"]']), tmp_path / "qsgd").rounds[-1]
    assert squeezed["bytes_up_raw"] == squeezed["clients"] * 4 * shared
    assert squeezed["bytes_up"] < 0.3 * squeezed["bytes_up_raw"] and squeezed["personal"]["mean"] > 0.3


@pytest.mark.parametrize("strategy, pipeline", [("ifca", '["clip", "secagg"]'), ("cfl", '["clip"]')])
def test_clustered_training_refuses_a_server_that_sees_only_a_sum(strategy, pipeline):
    with pytest.raises(ConfigError, match=r"server\.strategy.*reads each client's update"):
        run_config(load_config(None, [*RUN, f"server.strategy={strategy}", "server.clients_per_round=8",
                                      "privacy.clip_norm=1.0", f"codec.pipeline={pipeline}"]), None)


def test_the_local_only_baseline_is_each_client_trained_alone_from_the_initial_model(tmp_path):
    """eval.local_only: after the last round, client i trains alone from the initial model for its share of
    the run (⌈3 rounds · 4 clients / 8⌉ = 2 epochs) and is judged on its held-out split — recomputed here."""
    from dataclasses import replace

    from fedstack.engine.base import evaluate_held_out
    from fedstack.plan import client_side, dataset_of
    from fedstack.seeding import int_seed

    config = load_config(None, [*RUN, "server.strategy=fedper", "eval.local_only=true"])
    history = run_config(config, tmp_path / "run")
    last = history.rounds[-1]
    assert all("local_only" not in r for r in history.rounds[:-1]) and last["local_only"]["clients"] == 8
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["final"]["local_only"] == last["local_only"]
    dataset = dataset_of(config)
    factory, params, fit, _ = client_side(config, dataset)
    for cid in (0, 5):
        alone = replace(fit, epochs=2, seed=int_seed(config.seed, "client", 0, cid))
        result = evaluate_held_out(factory(), dataset.client(cid), params, finetune=alone)
        assert last["local_only"]["by_client"][str(cid)] == result.accuracy


@pytest.mark.parametrize("strategy", ["fedper", "ditto"])
def test_the_personal_part_is_in_no_payload_a_client_sends(strategy):
    """What a client sends is its encoded update; its trained personal part (FedPer's head, Ditto's v_k) is
    kept as state and appears nowhere in the payload's bytes."""
    from fedstack.client import Task
    from fedstack.codec import build_pipeline
    from fedstack.engine.base import fit_and_encode
    from fedstack.plan import client_side, dataset_of

    config = load_config(None, [*RUN, f"server.strategy={strategy}"])
    dataset = dataset_of(config)
    factory, params, fit, _ = client_side(config, dataset)
    trainer = factory()
    server = Personalized(personalization_of(config, trainer), fit)
    task = server.configure(1, params, [2])[0]
    task = Task(task.round, task.client_id, task.config, state=server.first_state(params))
    reply = fit_and_encode(trainer, build_pipeline([]), config.seed, task, dataset.client(2), server.broadcast(params))
    kept = reply.state[STATE_KEY]
    assert len(reply.payload) == 4 * server.personal.split.shared_size
    moved = np.flatnonzero(kept != task.state[STATE_KEY])  # what training changed in the personal part
    assert moved.size > 100
    change = (kept - task.state[STATE_KEY]).astype(np.float32)
    for sent_as in (kept, change):  # neither the trained weights nor their change, anywhere in the bytes
        window = sent_as[moved[0]:moved[0] + 8].tobytes()  # 32 bytes of the trained personal part
        assert window not in reply.payload
