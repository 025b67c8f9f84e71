"""Byzantine robustness: final test accuracy of each defence under each attack (issue #9).

    cd benchmarks && PYTHONPATH=../src python robustness.py [--rounds 20] [--fraction 0.2]
        [--attacks none,sign_flip,gaussian,scale,label_flip,alie,ipm]
        [--defences fedavg,median,trimmed_mean,krum,multi_krum,norm_bound,centered_clip,fltrust]
        [--model cnn] [--engine pool] [--seed 0] [--set key=value ...]

Workload: the default one of `fedstack run` (Fashion-MNIST over 100 clients, Dirichlet(0.5) label
skew, McMahan's CNN, 10 clients a round, one local epoch), `--rounds` rounds, a `--fraction` of the
clients malicious (attack.fraction: drawn once with the run seed, the same clients for every cell
of the table), each attack at its defaults (fedstack.attack: sign_flip −4Δ, gaussian σ = 1, scale:
model replacement of a label-flipped model boosted ×10, label_flip, alie with Baruch et al.'s z_max,
ipm with ε = 0.1; alie and ipm are omniscient, as in both papers' evaluations: they see every honest
update of the round, `--no-omniscient` to pool only the colluders' own). Each defence is
`server.strategy`: FedAvg, or a robust rule in front of FedAvg's server step with its defaults
(server.byzantine = 0.2 for Krum's f, server.trim_beta = 0.2, norm_bound at the round's median norm,
centered_clip with τ = the median distance and one iteration, fltrust with 100 root examples).
Central test accuracy is evaluated after the last round only (`--eval-every` to change).

Prints the table attack × defence of final test accuracy (with the no-attack row), what each rule
cost per round (seconds of aggregation; FLTrust: also of the server's own training on its root data),
and the goal: FedAvg collapses (ends at least COLLAPSE points below the no-attack FedAvg) under
sign_flip and scale, while at least one of median / trimmed mean / Krum / centered clip ends within
WITHIN points of the no-attack FedAvg under each of sign_flip, gaussian, scale and label_flip; and,
for every attack, whether every defence fails (ends more than WITHIN points below). Results also go
to runs/robustness.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from common import name_list
from fedstack.plan import load_config
from fedstack.experiment import run_config
from fedstack.plan import dataset_of

HERE = Path(__file__).resolve().parent
ATTACKS = ("none", "sign_flip", "gaussian", "scale", "label_flip", "alie", "ipm")
DEFENCES = ("fedavg", "median", "trimmed_mean", "krum", "multi_krum", "norm_bound", "centered_clip", "fltrust")
GOAL_ATTACKS = ("sign_flip", "gaussian", "scale", "label_flip")  # some classic defence must hold under each
GOAL_DEFENCES = ("median", "trimmed_mean", "krum", "centered_clip")
COLLAPSE_ATTACKS = ("sign_flip", "scale")  # FedAvg must fall under these
WITHIN = 0.05  # a defence holds when it ends at most this far below the no-attack FedAvg
COLLAPSE = 0.20  # FedAvg collapses when it ends at least this far below it


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--fraction", type=float, default=0.2, help="attack.fraction: share of malicious clients")
    parser.add_argument("--attacks", default=",".join(ATTACKS), help="comma-separated; 'none' = no attack")
    parser.add_argument("--defences", default=",".join(DEFENCES), help="comma-separated server.strategy names")
    parser.add_argument("--model", default="cnn", choices=("logreg", "mlp", "cnn"))
    parser.add_argument("--engine", default="pool", choices=("local", "pool", "ray"))
    parser.add_argument("--eval-every", type=int, default=0, help="eval.every (0: after the last round only)")
    parser.add_argument("--omniscient", action=argparse.BooleanOptionalAction, default=True,
                        help="alie and ipm see every update of the round (else only the colluders' own)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="more config overrides")
    parser.add_argument("--out", default=str(HERE / "runs" / "bench-robustness"))
    parser.add_argument("--json", default=str(HERE / "runs" / "robustness.json"))
    args = parser.parse_args()
    attacks = name_list(parser, "--attacks", args.attacks, ATTACKS)
    defences = name_list(parser, "--defences", args.defences, DEFENCES)
    if "none" not in attacks or "fedavg" not in defences:  # the reference every cell is judged against
        print("note: the no-attack FedAvg run is added as the reference")
    base = [f"server.rounds={args.rounds}", f"model.name={args.model}", f"engine.name={args.engine}",
            f"eval.every={args.eval_every}", "eval.federated=false", f"seed={args.seed}", *args.set]
    dataset = dataset_of(load_config(None, base))  # one partition for every run
    cells = [("none", "fedavg")] + [(a, d) for a in attacks for d in defences if (a, d) != ("none", "fedavg")]
    print(f"{args.model}, {args.rounds} rounds, {args.fraction:.0%} malicious clients, seed {args.seed}, "
          f"alie/ipm {'omniscient' if args.omniscient else 'colluding'}, {len(cells)} runs", flush=True)
    results: dict[str, dict[str, dict]] = {}
    for attack, defence in cells:
        overrides = [*base, f"server.strategy={defence}"]
        if attack != "none":
            overrides += [f"attack.name={attack}", f"attack.fraction={args.fraction}"]
            if attack in ("alie", "ipm"):
                overrides.append(f"attack.omniscient={str(args.omniscient).lower()}")
        out = Path(args.out) / f"{attack}-{defence}"
        shutil.rmtree(out, ignore_errors=True)  # a fresh run, not the resumption of an old one
        started = time.perf_counter()
        history = run_config(load_config(None, overrides), out, dataset=dataset)
        rounds = history.rounds
        cost = [r["aggregate_s"] for r in rounds if r.get("aggregate_s") is not None]
        root = [r["root_s"] for r in rounds if r.get("root_s") is not None]
        cell = {"final": rounds[-1]["test_accuracy"], "wall_s": time.perf_counter() - started,
                "aggregate_s": sum(cost) / len(cost) if cost else None,
                "root_s": sum(root) / len(root) if root else None,
                "rejected": sum(r["failures_by_kind"].get("rejected", 0) for r in rounds)}
        results.setdefault(attack, {})[defence] = cell
        print(f"{attack:>10} × {defence:<13} final {cell['final']:.2%}  ({cell['wall_s']:.0f} s)", flush=True)
    report(results, attacks, defences)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=2) + "\n")
    print(f"results: {args.json}")


def report(results: dict, attacks: list[str], defences: list[str]) -> None:
    """The accuracy table, each rule's cost, and the goal check."""
    reference = results["none"]["fedavg"]["final"]
    print("\nfinal test accuracy (attack × defence)\n")
    print("| attack | " + " | ".join(defences) + " |\n|---|" + "---|" * len(defences))
    for attack in ["none", *(a for a in attacks if a != "none")]:
        row = results[attack]
        print(f"| {attack} | " + " | ".join(f"{row[d]['final']:.2%}" if d in row else "-" for d in defences) + " |")
    print("\ncost of each rule per round (mean over the table's runs)\n")
    print("| defence | aggregation | server training (fltrust) |\n|---|---|---|")
    for defence in defences:
        cells = [row[defence] for row in results.values() if defence in row]
        cost = [c["aggregate_s"] for c in cells if c["aggregate_s"] is not None]
        root = [c["root_s"] for c in cells if c["root_s"] is not None]
        print(f"| {defence} | " + (f"{1000 * sum(cost) / len(cost):.1f} ms" if cost else "streaming mean")
              + " | " + (f"{1000 * sum(root) / len(root):.0f} ms" if root else "-") + " |")
    print(f"\ngoal (reference: FedAvg without attack, {reference:.2%})")
    collapse = {a: results[a]["fedavg"]["final"] for a in COLLAPSE_ATTACKS if "fedavg" in results.get(a, {})}
    for attack, accuracy in collapse.items():
        fell = reference - accuracy >= COLLAPSE
        print(f"- FedAvg under {attack}: {accuracy:.2%} ({100 * (accuracy - reference):+.1f} pt): "
              f"{'collapses' if fell else 'does NOT collapse'} (at least {100 * COLLAPSE:.0f} pt down)")
    held_all = True
    for attack in GOAL_ATTACKS:
        row = results.get(attack, {})
        holding = [d for d in GOAL_DEFENCES if d in row and reference - row[d]["final"] <= WITHIN]
        tried = [d for d in GOAL_DEFENCES if d in row]
        if not tried:
            print(f"- {attack}: not run")
            held_all = False
            continue
        held_all &= bool(holding)
        print(f"- {attack}: " + (f"held by {', '.join(holding)}" if holding else
                                 f"NO defence of {', '.join(tried)} within {100 * WITHIN:.0f} pt"))
    met = held_all and len(collapse) == len(COLLAPSE_ATTACKS) and \
        all(reference - a >= COLLAPSE for a in collapse.values())
    print(f"goal {'met' if met else 'missed'}")
    for attack in attacks:
        if attack == "none":
            continue
        row = {d: c for d, c in results[attack].items() if d != "fedavg"}
        failed = [d for d, c in row.items() if reference - c["final"] > WITHIN]
        if row and len(failed) == len(row):
            print(f"- under {attack} every defence fails (best: {max(c['final'] for c in row.values()):.2%})")


if __name__ == "__main__":
    main()
