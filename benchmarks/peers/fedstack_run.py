"""fedstack peer of benchmarks/vs_peers.py: the default workload on the pool engine (project venv).

    python fedstack_run.py --inputs DIR --model mlp [--workers 0] [--params-out FILE]

fedstack loads its data with its own loaders (benchmarks/common.default_workload) and draws its own
schedule, batch orders and initial model from the seed; this script checks that they are the ones
in the shared inputs. Central evaluation every round, no federated evaluation, no run folder.
In-run time: from just before `simulate` (pool start-up included) to the end of the last round's
evaluation (the on_round callback of the last round).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import peerlib  # noqa: E402
from common import default_workload  # noqa: E402


def main() -> None:
    parser = peerlib.arguments(__doc__)
    parser.add_argument("--workers", type=int, default=0, help="pool workers (0 = one per core)")
    args = parser.parse_args()
    peerlib.one_thread()
    import fedstack
    from fedstack.client import FitConfig
    from fedstack.engine import make_engine
    from fedstack.experiment import simulate
    from fedstack.loop import Evaluation, Parts
    from fedstack.sampling import UniformSampler
    from fedstack.strategy import FedAvg

    inputs = peerlib.Inputs(args.inputs, args.model, data=False)
    config, dataset, factory, params0 = default_workload(inputs.rounds, [f"model.name={args.model}"])
    c, s = config.client, config.server
    sampler = UniformSampler(dataset.num_clients, config.seed)
    same = (np.array_equal(params0, inputs.params0)
            and all(list(sampler.sample(r + 1, s.clients_per_round)) == list(inputs.schedule[r])
                    for r in range(inputs.rounds))
            and (c.epochs, c.batch_size, c.lr) == (inputs.epochs, inputs.batch_size, inputs.lr))
    if not same:
        raise SystemExit("fedstack's workload differs from the shared inputs (initial model, schedule or config)")
    ends: list[float] = []
    start = time.perf_counter()
    history = simulate(factory, dataset, params0, strategy=FedAvg(FitConfig(epochs=c.epochs, batch_size=c.batch_size,
                                                                           lr=c.lr)),
                       rounds=s.rounds, clients_per_round=s.clients_per_round, engine=make_engine("pool", args.workers),
                       seed=config.seed, evaluation=Evaluation(federated=False),
                       parts=Parts(callbacks=[lambda record, params: ends.append(time.perf_counter())]))
    accuracies = [r["test_accuracy"] for r in history.rounds]
    peerlib.emit({"peer": "fedstack", "framework": f"fedstack {fedstack.__version__}", "model": args.model,
                  "workers": args.workers, "in_run_s": ends[-1] - start, "returned_s": time.perf_counter() - start,
                  "accuracy": accuracies[-1], "accuracies": accuracies}, history.params, args.params_out)


if __name__ == "__main__":
    main()
