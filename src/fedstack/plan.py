"""Plan: a config read into the parts a run is built from — the data set, the model's trainer factory,
the initial model and the clients' local work. What a simulation, a deployed server and a deployed
device all build the same way (none of them imports the others for it)."""

from __future__ import annotations

import functools
from typing import Callable

import numpy as np

from .client import FitConfig, Trainer
from .config import Config
from .seeding import int_seed


def make_trainer(model: str, input_shape: tuple[int, ...], num_classes: int, optimizer: str):
    """A TorchTrainer for a named model (picklable through functools.partial)."""
    from .client import TorchTrainer
    from .models import build_model

    return TorchTrainer(build_model(model, input_shape, num_classes), optimizer=optimizer, jit_eval=True)


def initial_params(trainer_factory: Callable[[], Trainer], seed: int) -> np.ndarray:
    """The starting global model: the factory's model initialised from the run seed."""
    import torch

    torch.manual_seed(int_seed(seed, "init"))
    return trainer_factory().get_params()


def dataset_of(config: Config):
    """The FederatedDataset a Config names."""
    from .data import build_dataset

    d = config.data
    return build_dataset(d.name, num_clients=d.num_clients, partition=d.partition, alpha=d.alpha,
                         beta=d.beta, seed=config.seed, path=d.path, holdout=d.holdout, level=d.level,
                         vocab_size=d.vocab_size)


def client_side(config: Config, dataset):
    """What clients run under a Config: (trainer factory, initial params, local work, fine-tuning or None)."""
    factory = functools.partial(make_trainer, config.model.name, tuple(dataset.x.shape[1:]),
                                dataset.num_classes, config.client.optimizer)
    c = config.client
    fit = FitConfig(epochs=c.epochs, local_steps=c.local_steps, batch_size=c.batch_size, lr=c.lr, mu=c.mu,
                    dp_sgd=c.dp_sgd, dp_noise_multiplier=c.dp_noise_multiplier, dp_max_grad_norm=c.dp_max_grad_norm)
    steps = config.eval.finetune_steps
    finetune = FitConfig(local_steps=steps, batch_size=c.batch_size, lr=c.lr) if steps else None
    return factory, initial_params(factory, config.seed), fit, finetune
