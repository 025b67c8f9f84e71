"""SCAFFOLD: the client's option-II control variate, the server step, and whole runs with client state."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedstack.client import FitConfig, TorchTrainer
from fedstack.plan import load_config
from fedstack.engine import LocalEngine
from fedstack.errors import FedstackError
from fedstack.experiment import run_config, simulate
from fedstack.store import RunStore
from fedstack.strategy import ClientUpdate, FedAvg, Scaffold, broadcast
from fedstack.strategy.scaffold import scaffold_step

from crashes import Crash, crash_after

# Client i holds one example (s_i, t_i) and the loss ½(w·s_i − t_i)²: a quadratic with curvature s_i²
# and minimiser t_i/s_i. The federation's optimum is Σ s_i t_i / Σ s_i².
S = np.array([1.0, 2.0, 0.5], np.float32)
T = np.array([1.0, -2.0, 3.0], np.float32)
OPTIMUM = float((S * T).sum() / (S * S).sum())


class OneExample:
    def __init__(self, i):
        self.x, self.y, self.train_idx, self.num_examples = S[:, None], T[:, None], np.array([i]), 1


def quadratic_trainer():
    return TorchTrainer(torch.nn.Linear(1, 1, bias=False),
                        loss_fn=lambda out, y, reduction="mean": 0.5 * ((out - y) ** 2).sum())


def run_rounds(strategy, rounds, participants, lr=0.1, steps=10):
    """Rounds of `strategy` over the quadratic clients; returns final params and the clients' states."""
    trainer, params, states = quadratic_trainer(), np.zeros(1, np.float32), {}
    for r in range(rounds):
        sent = broadcast(strategy, params)
        updates = []
        for task in strategy.configure(r, params, participants(r)):
            result = trainer.fit(sent, OneExample(task.client_id), task.config, states.get(task.client_id))
            states[task.client_id] = result.state
            updates.append(ClientUpdate(task.client_id, result.update, 1))
        params = strategy.aggregate(r, params, updates)
    return params, states


def test_option_two_control_variate_by_hand():
    # Client 0 (s=1, t=1) from w=0 with c=0.5, c_i=0.25, lr=0.1, K=2 steps of w ← w − lr(g(w) + c − c_i):
    # g(0) = −1 → w = 0.1·(1 − 0.25) = 0.075; g(0.075) = −0.925 → w = 0.075 + 0.1·0.675 = 0.1425.
    # c_i⁺ = c_i − c + (x − y)/(K·lr) = 0.25 − 0.5 − 0.1425/0.2 = −0.9625.
    config = FitConfig(local_steps=2, batch_size=1, lr=0.1, scaffold=True)
    result = quadratic_trainer().fit(np.array([0.0, 0.5], np.float32), OneExample(0), config,
                                     np.array([0.25], np.float32))
    np.testing.assert_allclose(result.update, [0.1425, -0.9625 - 0.25], rtol=1e-6)
    np.testing.assert_allclose(result.state, [-0.9625], rtol=1e-6)


def test_server_step_by_hand():
    params, control = scaffold_step(np.array([1.0], np.float32), np.array([0.2], np.float32),
                                    np.array([0.5], np.float32), np.array([0.9]), num_clients=3, server_lr=2.0)
    np.testing.assert_allclose(params, [2.0])
    np.testing.assert_allclose(control, [0.5], rtol=1e-6)


def test_scaffold_finds_the_optimum_that_fedavg_drifts_from():
    fit = FitConfig(local_steps=10, batch_size=1, lr=0.1)
    everyone = lambda r: [0, 1, 2]  # noqa: E731
    fedavg, _ = run_rounds(FedAvg(fit), 200, everyone)
    scaffold, _ = run_rounds(Scaffold(3, fit), 200, everyone)
    assert abs(float(scaffold[0]) - OPTIMUM) < 1e-5
    assert abs(float(fedavg[0]) - OPTIMUM) > 0.5  # many local steps pull FedAvg towards the mean of t_i/s_i


@settings(max_examples=25, deadline=None)
@given(st.lists(st.lists(st.integers(0, 2), min_size=1, max_size=3, unique=True), min_size=1, max_size=6))
def test_server_control_is_the_mean_of_all_client_controls(schedule):
    strategy = Scaffold(3, FitConfig(local_steps=3, batch_size=1, lr=0.1))
    _, states = run_rounds(strategy, len(schedule), lambda r: sorted(schedule[r]))
    mean = sum(states.values()) / 3  # a client that never took part still holds cᵢ = 0
    np.testing.assert_allclose(strategy.control, mean, atol=1e-5)


def test_a_malformed_broadcast_is_refused_by_the_trainer():
    with pytest.raises(ValueError, match="scaffold expects"):
        quadratic_trainer().fit(np.zeros(1, np.float32), OneExample(0),
                                FitConfig(local_steps=1, scaffold=True))


RUN = ["data.name=digits", "data.num_clients=6", "model.name=logreg", "server.rounds=4",
       "server.clients_per_round=3", "server.strategy=scaffold", "eval.federated=false", "client.lr=0.05"]


def test_runs_alike_on_both_engines_keep_state_in_the_store_and_resume_exactly(tmp_path):
    local = run_config(load_config(None, [*RUN, "engine.name=local"]), tmp_path / "local")
    pool = run_config(load_config(None, [*RUN, "engine.name=pool", "engine.workers=2"]), tmp_path / "pool")
    assert np.array_equal(local.params, pool.params)
    accuracy = [r["test_accuracy"] for r in local.rounds]
    assert accuracy[-1] > max(0.5, accuracy[0]), accuracy
    # SCAFFOLD sends [x; c] and receives [Δy; Δc]: twice FedAvg's bytes.
    assert local.rounds[0]["bytes_down"] == 3 * 2 * local.params.nbytes
    store = RunStore(tmp_path / "local" / "store.sqlite")
    kept = [cid for cid in range(6) if store.get(cid) is not None]
    assert kept and all(store.get(cid)["trainer"].shape == local.params.shape for cid in kept)
    assert "control" in store.strategy_state()
    store.close()

    config = load_config(None, [*RUN, "engine.name=local"])
    with pytest.raises(Crash):
        run_config(config, tmp_path / "broken", on_round=[crash_after(2)])
    assert np.array_equal(run_config(config, tmp_path / "broken").params, local.params)


def test_client_state_is_never_recomputed_from_scratch():
    # The same run with client states forgotten after every round ends elsewhere.
    from fedstack.data import build_dataset
    from fedstack.plan import initial_params, make_trainer
    import functools

    data = build_dataset("digits", num_clients=4, partition="iid", alpha=0.5, seed=0)
    factory = functools.partial(make_trainer, "logreg", (1, 8, 8), 10, "sgd")
    params = initial_params(factory, 0)
    fit = FitConfig(epochs=1, lr=0.05)

    class Forgetful:
        def get(self, client_id):
            return None

        def put(self, round, states):
            pass

    class Counting:
        def __init__(self):
            self.states, self.reads = {}, 0

        def get(self, client_id):
            self.reads += self.states.get(client_id) is not None
            return self.states.get(client_id)

        def put(self, round, states):
            self.states.update(states)

    from fedstack.engine import Workload
    from fedstack.codec import Pipeline
    from fedstack.loop import Evaluation, Synchronous

    def run(states):
        server = Synchronous(Scaffold(4, fit), LocalEngine(), Workload(factory, data, Pipeline(), 0), rounds=3,
                             clients_per_round=4, evaluation=Evaluation(federated=False), client_states=states)
        return server.run(params)

    counting = Counting()
    kept, forgot = run(counting), run(Forgetful())
    assert counting.reads == 8  # rounds 2 and 3 read the 4 states of the round before
    assert not np.array_equal(kept, forgot)


def test_an_engine_that_cannot_carry_client_state_is_refused_before_training():
    from fedstack.engine import Engine

    class Stateless(Engine):  # an engine that keeps the default: it carries no client state
        def start(self, workload):
            raise AssertionError("must not start")

    from fedstack.data import build_dataset
    from fedstack.plan import initial_params, make_trainer
    import functools

    data = build_dataset("digits", num_clients=4, partition="iid", alpha=0.5, seed=0)
    factory = functools.partial(make_trainer, "logreg", (1, 8, 8), 10, "sgd")
    with pytest.raises(FedstackError, match="server.strategy: Scaffold keeps state on each client"):
        simulate(factory, data, initial_params(factory, 0), strategy=Scaffold(4), rounds=1, clients_per_round=2,
                 engine=Stateless())
