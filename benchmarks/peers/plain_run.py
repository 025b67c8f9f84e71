"""Plain-PyTorch peer of benchmarks/vs_peers.py: benchmarks/overhead.py's plain_loop, one process (project venv).

    python plain_run.py --inputs DIR --model mlp [--params-out FILE]

The same SGD steps as fedstack written by hand (the physical limit of one process): fedstack's
loaders, schedule and initial model, checked against the shared inputs. In-run time: the plain loop
from its first client to the end of its last evaluation.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import peerlib  # noqa: E402
from common import default_workload  # noqa: E402
from overhead import plain_loop  # noqa: E402


def main() -> None:
    parser = peerlib.arguments(__doc__)
    args = parser.parse_args()
    peerlib.one_thread()
    import torch

    inputs = peerlib.Inputs(args.inputs, args.model, data=False)
    config, dataset, _, params0 = default_workload(inputs.rounds, [f"model.name={args.model}"])
    if not np.array_equal(params0, inputs.params0):
        raise SystemExit("fedstack's initial model differs from the shared inputs")
    start = time.perf_counter()
    params, accuracies = plain_loop(config, dataset, params0)
    peerlib.emit({"peer": "plain", "framework": f"torch {torch.__version__}", "model": args.model,
                  "in_run_s": time.perf_counter() - start, "accuracy": accuracies[-1], "accuracies": accuracies},
                 params, args.params_out)


if __name__ == "__main__":
    main()
