"""Update compression on the default workload: upload bytes, ratio to float32, accuracy, codec time.

Goals (issue 5): qsgd 8 bits ≥ 3.9× and within 0.5 points of uncompressed; topk 1 % with error
feedback ≥ 30× (indices counted) and within 2 points; sign with error feedback ≥ 25×; encode +
decode below 5 % of a client's local training time.

    python benchmarks/compression.py [--rounds 20] [--codecs none,qsgd,topk,sign] [--out runs/bench-compression]

Bytes are the lengths of the real payloads each client sends (headers, indices, scales included),
as summed by the server. Codec time: one client's real update (the default CNN, 1,663,370 values)
encoded and decoded, median of 7, against the median time of that client's local training.
"""

from __future__ import annotations

import argparse
import functools
import shutil
import statistics
import time
from pathlib import Path

import numpy as np

from common import save_figure
from fedstack.client import FitConfig
from fedstack.codec import CodecContext, build_pipeline
from fedstack.plan import load_config
from fedstack.experiment import run_config
from fedstack.plan import dataset_of, initial_params, make_trainer

SETTINGS = {
    "none": [],
    "qsgd": ['codec.pipeline=["qsgd"]', "codec.bits=8"],
    "topk": ['codec.pipeline=["topk"]', "codec.topk_fraction=0.01"],
    "sign": ['codec.pipeline=["sign"]'],
    "randk": ['codec.pipeline=["randk"]', "codec.topk_fraction=0.01"],
    "qsgd+zstd": ['codec.pipeline=["qsgd", "zstd"]', "codec.bits=8"],
}
GOALS = {"qsgd": (3.9, 0.5), "topk": (30.0, 2.0), "sign": (25.0, None)}


def codec_times(names: list[str]) -> dict[str, tuple[float, float]]:
    """(encode + decode seconds, local training seconds) for one client's real update, per setting."""
    config = load_config(None, [])
    dataset = dataset_of(config)
    factory = functools.partial(make_trainer, config.model.name, tuple(dataset.x.shape[1:]), dataset.num_classes,
                                config.client.optimizer)
    import torch

    torch.set_num_threads(1)  # as in every engine's worker
    trainer, params = factory(), initial_params(factory, config.seed)
    fit = FitConfig(epochs=config.client.epochs, batch_size=config.client.batch_size, lr=config.client.lr)
    fits = []
    for _ in range(3):
        started = time.perf_counter()
        update = trainer.fit(params, dataset.client(0), fit).update
        fits.append(time.perf_counter() - started)
    out = {}
    for name in names:
        codec = load_config(None, SETTINGS[name]).codec
        pipeline = build_pipeline(codec.pipeline, codec)
        ctx, spent = CodecContext(1, 0, 0), []
        for _ in range(7):
            started = time.perf_counter()
            payload, _ = pipeline.encode_with_state(update, ctx, None)
            pipeline.decode(payload, ctx)
            spent.append(time.perf_counter() - started)
        out[name] = (statistics.median(spent), statistics.median(fits))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--codecs", default="none,qsgd,topk,sign")
    parser.add_argument("--out", default="runs/bench-compression")
    args = parser.parse_args()
    names = args.codecs.split(",")
    results = {}
    for name in names:
        out = Path(args.out) / name
        shutil.rmtree(out, ignore_errors=True)  # a fresh run, not the resumption of an old one
        history = run_config(load_config(None, [*SETTINGS[name], f"server.rounds={args.rounds}",
                                                "eval.federated=false"]), out)
        rounds = history.rounds
        raw = sum(r["bytes_up_raw"] for r in rounds)
        sent = sum(r["bytes_up"] for r in rounds)
        results[name] = {"bytes_per_round": sent / len(rounds), "ratio": raw / sent,
                         "accuracy": rounds[-1]["test_accuracy"], "curve": [r["test_accuracy"] for r in rounds],
                         "uploaded": np.cumsum([r["bytes_up"] for r in rounds]) / 2**20}
        print(f"{name}: {results[name]['bytes_per_round'] / 2**20:.2f} MiB up per round, ratio {raw / sent:.2f}×, "
              f"final accuracy {rounds[-1]['test_accuracy']:.2%}", flush=True)
    times = codec_times(names)
    base = results.get("none", {}).get("accuracy")
    print("\n| codec | upload per round | ratio vs float32 | final accuracy | vs none | encode+decode | "
          "share of local training |\n|---|---|---|---|---|---|---|")
    for name in names:
        r, (codec_s, fit_s) = results[name], times[name]
        delta = f"{100 * (r['accuracy'] - base):+.2f} pt" if base is not None else "-"
        print(f"| {name} | {r['bytes_per_round'] / 2**20:.3f} MiB | {r['ratio']:.2f}× | {r['accuracy']:.2%} | {delta} "
              f"| {1000 * codec_s:.1f} ms | {100 * codec_s / fit_s:.2f} % of {fit_s:.2f} s |")
    for name, (ratio_goal, points) in GOALS.items():
        if name in results:
            r = results[name]
            ok = r["ratio"] >= ratio_goal and (points is None or base is None or 100 * (base - r["accuracy"]) <= points)
            print(f"goal {name}: ratio ≥ {ratio_goal}×" + (f", within {points} points" if points else "")
                  + f": {'met' if ok else 'NOT met'}; codec time < 5 %: "
                  f"{'met' if times[name][0] < 0.05 * times[name][1] else 'NOT met'}")
    plot(results, Path(args.out) / "compression.png")


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_round, by_bytes) = plt.subplots(1, 2, figsize=(11, 4))
    for name, r in results.items():
        by_round.plot(range(1, len(r["curve"]) + 1), r["curve"], marker="o", label=name)
        by_bytes.plot(r["uploaded"], r["curve"], marker="o", label=name)
    by_round.set(xlabel="round", ylabel="test accuracy", title="Accuracy per round")
    by_bytes.set(xlabel="cumulative MiB uploaded", ylabel="test accuracy", xscale="log", title="Accuracy per upload")
    save_figure(fig, (by_round, by_bytes), path)


if __name__ == "__main__":
    main()
