"""A decentralized run from a Config (`decentralized.topology`): the gossip schedule (`schedule.Gossip`) with
its graph, its run directory and the summary's `decentralized` section."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..codec import Pipeline, build_pipeline
from ..config import Config, to_toml
from ..engine import Engine, Workload, make_engine
from ..errors import ConfigError
from ..loop import Parts
from ..report import MetricsWriter, write_report, write_summary
from ..strategy import FedAvg
from .gossip import average
from .schedule import Gossip, GossipOptions
from .topology import build_topology, spectral_gap


def check_config(config: Config) -> None:
    """Refuse, before any work, what a decentralized run cannot honour."""
    if config.server.strategy not in ("fedavg", "fedprox"):
        raise ConfigError("server.strategy", f"{config.server.strategy} is a server algorithm; decentralized "
                          "training (decentralized.topology) has no server: use fedavg, or fedprox with client.mu")
    if config.codec.pipeline and not config.decentralized.choco:
        raise ConfigError("codec.pipeline", "D-PSGD gossips raw float32 models; to compress gossip set "
                          "decentralized.choco=true (CHOCO-SGD)")
    if config.codec.download:
        raise ConfigError("codec.download", "decentralized training has no server to download from; "
                          "CHOCO-SGD compresses gossip with codec.pipeline")


def run_decentralized(config: Config, out: str | Path | None = None, on_round: list[Callable] = (),
                      dataset=None, engine: str | Engine | None = None):
    """Run the decentralized experiment a Config with `decentralized.topology` describes; returns a History.

    Writes config.toml, metrics.jsonl, summary.json and report.png to `out` (default runs/<timestamp>),
    like `experiment.run_config`. `History.params` is the final average model x̄.
    """
    from ..plan import client_side, codec_options, dataset_of, evaluation_of, schedule_of, trackers_of
    from ..records import History, prepare_run_dir, summarize

    check_config(config)
    section = config.decentralized
    dataset = dataset if dataset is not None else dataset_of(config)
    adjacency = build_topology(section, dataset.num_clients, config.seed)  # a disconnected graph fails here
    pipeline = build_pipeline(config.codec.pipeline, codec_options(config))
    run_dir = prepare_run_dir(out)
    on_round = [*on_round, *trackers_of(config, run_dir)]
    factory, params, fit, finetune = client_side(config, dataset)
    (run_dir / "config.toml").write_text(to_toml(config))
    if engine is None or isinstance(engine, str):
        engine = make_engine(engine or config.engine.name, config.engine.workers, config.engine.address)
    elif engine.client_state == "device":
        raise ConfigError("decentralized.topology", "decentralized training runs in simulation only "
                          "(engine.name = local | pool | ray), not over remote clients")
    history = History(run_dir=run_dir)
    gossip = GossipOptions(adjacency, choco=section.choco, gamma=section.gamma, compressor=pipeline,
                           node_failure=section.node_failure)
    loop = Gossip(FedAvg(fit), engine, Workload(factory, dataset, Pipeline(), config.seed), rounds=config.server.rounds,
                  gossip=gossip, evaluation=evaluation_of(config, finetune),
                  parts=Parts(callbacks=[MetricsWriter(run_dir), history, *on_round],
                              transforms=[schedule] if (schedule := schedule_of(config)) is not None else []))
    try:
        X = loop.run(params)
        history.params = average(X)
    except BaseException as exc:
        history.status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        raise
    finally:
        summary = summarize(history, config.seed, config.model_dump())
        last = history.rounds[-1] if history.rounds else {}
        degree = adjacency.sum(axis=1)
        summary["decentralized"] = {
            "algorithm": "choco-sgd" if section.choco else "d-psgd", "topology": section.topology,
            "nodes": int(len(adjacency)), "edges": int(adjacency.sum() // 2),
            "degree_min": int(degree.min()), "degree_max": int(degree.max()),
            "spectral_gap": spectral_gap(loop.W),
            "consensus_distance": last.get("consensus_distance"),
            "node_accuracy_mean": next((r["node_accuracy_mean"] for r in reversed(history.rounds)
                                        if r.get("node_accuracy_mean") is not None), None),
        }
        write_summary(run_dir, summary)
        if history.rounds:
            write_report(run_dir)
        for callback in loop.callbacks:  # trackers keep summary.json and report.png too
            callback.on_results(run_dir)
    return history
