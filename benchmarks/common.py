"""Shared set-up of the benchmarks: the default workload of `fedstack run`."""

from __future__ import annotations

import functools

from fedstack.config import load_config
from fedstack.data import build_dataset
from fedstack.experiment import initial_params, make_trainer


def default_workload(rounds: int | None = None, overrides: list[str] = ()):
    """(config, dataset, trainer factory, initial params) of the default experiment."""
    config = load_config(None, [*overrides, *( [f"server.rounds={rounds}"] if rounds else [])])
    d = config.data
    dataset = build_dataset(d.name, num_clients=d.num_clients, partition=d.partition, alpha=d.alpha,
                            seed=config.seed, path=d.path, holdout=d.holdout)
    factory = functools.partial(make_trainer, config.model.name, tuple(dataset.x.shape[1:]),
                                dataset.num_classes, config.client.optimizer)
    return config, dataset, factory, initial_params(factory, config.seed)
