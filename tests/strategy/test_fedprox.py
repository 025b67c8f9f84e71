import numpy as np
import pytest
import torch

from fedstack.client import FitConfig, TorchTrainer
from fedstack.plan import load_config
from fedstack.data import ClientData
from fedstack.errors import ConfigError
from fedstack.models import build_model


def _data(n=24, seed=0):
    rng = np.random.default_rng(seed)
    return ClientData(rng.normal(size=(n, 1, 8, 8)).astype(np.float32), rng.integers(0, 10, n),
                      np.arange(n), np.zeros(0, dtype=np.int64))


def test_proximal_term_matches_autograd_of_the_fedprox_objective():
    data, mu, lr = _data(), 0.5, 0.1
    torch.manual_seed(0)
    trainer = TorchTrainer(build_model("mlp", (1, 8, 8), 10))
    params = trainer.get_params()
    config = FitConfig(epochs=2, batch_size=6, lr=lr, mu=mu, seed=4)
    ours = trainer.fit(params, data, config).update

    # reference: the FedProx objective written out, differentiated by autograd
    torch.manual_seed(0)
    model = build_model("mlp", (1, 8, 8), 10)
    anchor = [p.detach().clone() for p in model.parameters()]
    from fedstack.client import batch_order
    for idx in batch_order(data.train_idx, config):
        loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(data.x[idx])), torch.from_numpy(data.y[idx]))
        loss = loss + mu / 2 * sum(((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor))
        model.zero_grad()
        loss.backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= lr * p.grad
    reference = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).numpy() - params
    np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-6)


def test_larger_mu_keeps_the_local_model_closer_to_the_global_one():
    from fedstack.data import build_dataset

    data = build_dataset("digits", num_clients=4, partition="iid", alpha=1.0, seed=0).client(0)
    torch.manual_seed(1)
    trainer = TorchTrainer(build_model("mlp", (1, 8, 8), 10))
    params = trainer.get_params()
    drift = [np.linalg.norm(trainer.fit(params, data, FitConfig(epochs=5, lr=0.05, mu=mu, seed=1)).update)
             for mu in (0.0, 1.0, 5.0)]
    assert drift[0] > drift[1] > drift[2]


def test_fedprox_needs_a_proximal_weight():
    with pytest.raises(ConfigError, match="client.mu"):
        load_config(None, ["server.strategy=fedprox"])
    assert load_config(None, ["server.strategy=fedprox", "client.mu=0.01"]).client.mu == 0.01


def test_a_fedprox_run_learns(tmp_path):
    from fedstack.experiment import run_config

    config = load_config(None, ["server.strategy=fedprox", "client.mu=0.1", "data.name=digits",
                                "data.num_clients=10", "model.name=logreg", "server.rounds=4",
                                "server.clients_per_round=4", "engine.name=local", "client.lr=0.1"])
    accuracy = [r["test_accuracy"] for r in run_config(config, tmp_path / "run").rounds]
    assert accuracy[-1] > max(0.5, accuracy[0]), accuracy


def test_clients_that_do_less_local_work_still_aggregate_exactly():
    # FedProx tolerates variable local work: each client may take a different number of steps
    # (here 1, 2 or 3); the new global model is still the example-weighted mean of what arrived.
    import functools
    from dataclasses import replace

    from fedstack.codec import Pipeline
    from fedstack.data import build_dataset
    from fedstack.engine import LocalEngine, Workload
    from fedstack.plan import initial_params, make_trainer
    from fedstack.seeding import int_seed
    from fedstack.loop import Evaluation, Synchronous
    from fedstack.strategy import FedAvg

    class VariableWork(FedAvg):
        def configure(self, round, params, sampled_ids):
            return [replace(t, config=replace(t.config, local_steps=1 + t.client_id % 3))
                    for t in super().configure(round, params, sampled_ids)]

    data = build_dataset("digits", num_clients=6, partition="powerlaw", alpha=0.5, seed=0)
    factory = functools.partial(make_trainer, "logreg", (1, 8, 8), 10, "sgd")
    params = initial_params(factory, 0)
    strategy = VariableWork(FitConfig(batch_size=8, lr=0.1, mu=0.5))
    server = Synchronous(strategy, LocalEngine(), Workload(factory, data, Pipeline(), 0), rounds=1,
                         clients_per_round=6, evaluation=Evaluation(every=0, federated=False))
    server.engine.start(server.workload)
    new, tally, _ = server.round(1, params)
    trainer, total, weight = factory(), np.zeros(params.size), 0
    for task in strategy.configure(1, params, server.sampler.sample(1, 6)):
        config = replace(task.config, seed=int_seed(0, "client", 1, task.client_id))
        result = trainer.fit(params, data.client(task.client_id), config)
        assert result.metrics["steps"] == 1 + task.client_id % 3
        total += result.num_examples * result.update.astype(np.float64)
        weight += result.num_examples
    assert tally.clients == 6
    np.testing.assert_allclose(new, params + (total / weight).astype(np.float32), rtol=0, atol=1e-7)
