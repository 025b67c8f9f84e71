"""Shared set-up of the benchmarks: the default workload of `fedstack run`."""

from __future__ import annotations

import functools

from fedstack.plan import load_config
from fedstack.plan import dataset_of, initial_params, make_trainer


def default_workload(rounds: int | None = None, overrides: list[str] = ()):
    """(config, dataset, trainer factory, initial params) of the default experiment."""
    config = load_config(None, [*overrides, *( [f"server.rounds={rounds}"] if rounds else [])])
    dataset = dataset_of(config)
    factory = functools.partial(make_trainer, config.model.name, tuple(dataset.x.shape[1:]),
                                dataset.num_classes, config.client.optimizer)
    return config, dataset, factory, initial_params(factory, config.seed)


def name_list(parser, flag: str, text: str, allowed) -> list[str]:
    """The names in a comma-separated option, each checked against `allowed` (else argparse's exit 2)."""
    names = [n for n in text.split(",") if n]
    for name in names:
        if name not in allowed:
            parser.error(f"{flag}: unknown name {name!r} ({' | '.join(allowed)})")
    return names


def save_figure(fig, axes, path) -> None:
    """Grid and legend on every axis, then write the figure to `path` (creating its folder) and say where."""
    from pathlib import Path

    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    print(f"plot: {path}")
