"""pfl peer of benchmarks/vs_peers.py: the shared workload on Apple's pfl, one process or several.

Runs in benchmarks/.peers/pfl (torch + pfl[pytorch]), inside a loopback-only network namespace:

    python pfl_run.py --inputs DIR --model mlp [--params-out FILE]                  # one process
    torchrun --standalone --nnodes=1 --nproc_per_node=2 pfl_run.py --inputs DIR ...  # two workers

Several workers on one machine is pfl's documented multi-process mode ("Fast distributed
simulations": `torchrun --standalone --nnodes=1 --nproc_per_node=N`); pfl then splits each cohort
across the processes (balanced by the weights given in `user_id_to_weight`), sums their statistics
with torch.distributed (gloo on CPU) and shards the central evaluation.

How it follows the shared workload:
- the schedule: a "user" of pfl's FederatedDataset is one scheduled participation (round r, slot k),
  whose data is client schedule[r][k]'s examples in the order fedstack shuffles them for that round;
  the user sampler yields the participations in schedule order, so round r's cohort is exactly the
  scheduled clients (pfl samples for every worker from the same sequence);
- local training: pfl's own SGD loop (NNTrainHyperParams: 1 epoch, batch size, lr; torch.optim.SGD)
  over that order (pfl's Dataset does not shuffle: the order is the shuffle; with E > 1 it holds the
  E shuffles one after the other, and a batch may straddle two of them); FederatedAveraging with
  WeightByDatapoints (weighted FedAvg) and a central SGD of learning rate 1 (the plain average);
- central evaluation: CentralEvaluationCallback on the 10k test set, batches of 100. pfl evaluates
  before training and after every iteration but the first, 20 evaluations in all; the final one is
  after the last round. pfl also evaluates the clients of the first iteration on their own data
  before and after training (its algorithm does on iterations that are multiples of
  evaluation_frequency, and 0 always is); evaluation_frequency = rounds + 1 keeps it to that one;
- one torch thread per process.
In-run time: from just before the model, data set and backend objects are made (the cohort sampler
process of multi-worker mode starts there) to the end of `algorithm.run`. Before it: torchrun's
start of the processes and pfl's rendezvous (at import), counted in the whole-process time only.
"""

from __future__ import annotations

import itertools
import os
import time

import numpy as np

import peerlib


def main() -> None:
    parser = peerlib.arguments(__doc__)
    args = parser.parse_args()
    peerlib.one_thread()
    import torch

    import pfl
    from pfl.aggregate.simulate import SimulatedBackend
    from pfl.aggregate.weighting import WeightByDatapoints
    from pfl.algorithm import FederatedAveraging, NNAlgorithmParams
    from pfl.callback.base import TrainingProcessCallback
    from pfl.callback.central_evaluation import CentralEvaluationCallback
    from pfl.data.dataset import Dataset
    from pfl.data.federated_dataset import FederatedDataset
    from pfl.hyperparam import NNEvalHyperParams, NNTrainHyperParams
    from pfl.internal.ops import get_ops
    from pfl.metrics import Metrics, Weighted, get_overall_value
    from pfl.model.pytorch import PyTorchModel

    inputs = peerlib.Inputs(args.inputs, args.model)
    rank, world = get_ops().distributed.global_rank, get_ops().distributed.world_size
    if inputs.clients_per_round % world:
        raise SystemExit(f"{inputs.clients_per_round} clients per round do not split over {world} workers")

    class Net(torch.nn.Module):
        """The shared model with the `loss` and `metrics` pfl's PyTorchModel asks for."""

        def __init__(self):
            super().__init__()
            self.body = peerlib.build_model(inputs.model, inputs.input_shape, inputs.num_classes)

        def forward(self, x):
            return self.body(x)

        def loss(self, x, y):
            self.train()
            return torch.nn.functional.cross_entropy(self(x), y)

        @torch.no_grad()
        def metrics(self, x, y):
            self.eval()
            out = self(x)
            loss = float(torch.nn.functional.cross_entropy(out, y, reduction="sum"))
            return {"loss": Weighted(loss, len(y)), "accuracy": Weighted(int((out.argmax(1) == y).sum()), len(y))}

    class Recorder(TrainingProcessCallback):
        """Central accuracy of every iteration (iteration 0 carries the evaluation before training)."""

        def __init__(self):
            self.accuracies: list[float] = []

        def after_central_iteration(self, aggregate_metrics, model, *, central_iteration):
            for name, value in aggregate_metrics:
                if str(name) == "Central val | accuracy":
                    self.accuracies.append(get_overall_value(value))
            return False, Metrics()

    rounds, k = inputs.rounds, inputs.clients_per_round
    x, y = inputs.x, inputs.y

    def make_user(key: int) -> Dataset:
        order = inputs.order(*divmod(key, k))
        return Dataset((torch.from_numpy(x[order]), torch.from_numpy(y[order])))

    user_weights = {r * k + s: len(inputs.order(r, s)) for r in range(rounds) for s in range(k)}
    np.random.seed(0)
    torch.manual_seed(0)
    start = time.perf_counter()
    net = Net()
    peerlib.set_flat(net, inputs.params0)
    model = PyTorchModel(model=net, local_optimizer_create=torch.optim.SGD,
                         central_optimizer=torch.optim.SGD(net.parameters(), lr=1.0))
    participations = itertools.cycle(range(rounds * k))
    train_data = FederatedDataset(make_user, lambda: next(participations), user_id_to_weight=user_weights)
    backend = SimulatedBackend(training_data=train_data, val_data=train_data, postprocessors=[WeightByDatapoints()])
    eval_params = NNEvalHyperParams(local_batch_size=inputs.eval_batch_size)
    recorder = Recorder()
    test = Dataset((torch.from_numpy(inputs.x_test), torch.from_numpy(inputs.y_test)))
    callbacks = [CentralEvaluationCallback(test, eval_params, frequency=1),
                 recorder]
    FederatedAveraging().run(
        NNAlgorithmParams(central_num_iterations=rounds, evaluation_frequency=rounds + 1, train_cohort_size=k,
                          val_cohort_size=0),
        backend, model,
        NNTrainHyperParams(local_learning_rate=inputs.lr, local_num_epochs=1, local_batch_size=inputs.batch_size),
        eval_params, callbacks=callbacks)
    in_run = time.perf_counter() - start
    if rank == 0:
        peerlib.emit({"peer": f"pfl{world}", "framework": f"pfl {pfl.__version__}", "model": args.model,
                      "workers": world, "in_run_s": in_run, "accuracy": recorder.accuracies[-1],
                      "accuracies": recorder.accuracies, "pid": os.getpid()},
                     peerlib.get_flat(net), args.params_out)


if __name__ == "__main__":
    main()
