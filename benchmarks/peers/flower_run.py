"""Flower peer of benchmarks/vs_peers.py: the shared workload on Flower's simulation engine (Ray actors).

Runs in benchmarks/.peers/flower (torch + flwr[simulation]), inside a loopback-only network namespace:

    python flower_run.py --inputs DIR --model mlp --actors 2 [--params-out FILE]

Flower's current Message API: a ServerApp whose strategy (FedAvg, weighted by "num-examples") is
started with `strategy.start(...)`, a ClientApp with a train function, both run by
`flwr.simulation.run_simulation` on Ray with `--actors` actors of one CPU each.

How it follows the shared workload:
- the schedule: `ScheduledFedAvg.configure_train` sends round r's train messages to exactly the
  scheduled clients. The simulation maps its (random) node ids to partitions where the ServerApp
  cannot see it, so client c is the c-th node id in sorted order and its id travels in the
  message's config ("cid"); the ClientApp trains on that client's data;
- local training: plain SGD, lr, batch size and the per-epoch shuffles fedstack draws (from the
  inputs), from the global model in the message;
- central evaluation: `evaluate_fn` on the 10k test set after every round (it skips round 0,
  Flower's evaluation of the initial model, so every peer evaluates 20 times); no federated evaluation
  (fraction_evaluate = 0);
- one torch thread per process: the driver and every actor call torch.set_num_threads(1).
Each actor process keeps one model and the memory-mapped data between messages (user code may;
Flower's examples build them per message).

In-run time: from just before run_simulation (Ray start, actor start-up included) to the end of the
last evaluation; Ray's shutdown is only in the whole-process time vs_peers.py measures.
"""

from __future__ import annotations

import os
import time

import numpy as np

import peerlib

_CACHE: dict = {}


def _client_side(inputs_dir: str, model_name: str):
    """This actor's inputs and model, loaded once per process."""
    key = (inputs_dir, model_name)
    if key not in _CACHE:
        peerlib.one_thread()
        inputs = peerlib.Inputs(inputs_dir, model_name)
        _CACHE[key] = inputs, peerlib.build_model(model_name, inputs.input_shape, inputs.num_classes)
    return _CACHE[key]


def train(msg, context):
    from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

    config = msg.content["config"]
    inputs, model = _client_side(str(config["inputs"]), str(config["model"]))
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    rnd, slot = int(config["server-round"]) - 1, int(config["slot"])
    cid = int(config["cid"])
    assert inputs.schedule[rnd, slot] == cid, (rnd, slot, cid)
    peerlib.sgd(model, inputs.x, inputs.y, inputs.order(rnd, slot), inputs.batch_size, inputs.lr)
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()),
                          "metrics": MetricRecord({"num-examples": int(inputs.client_sizes[cid])})})
    return Message(content=content, reply_to=msg)


def make_apps(inputs: peerlib.Inputs, inputs_dir: str, record: dict):
    from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.serverapp.strategy.strategy_utils import sample_nodes

    class ScheduledFedAvg(FedAvg):
        """FedAvg whose round r trains exactly the clients of the shared schedule."""

        def configure_train(self, server_round, arrays, config, grid):
            # all nodes, waiting for them to connect as FedAvg's own sampling does
            nodes = sorted(sample_nodes(grid, len(inputs.client_sizes), len(inputs.client_sizes))[1])
            messages = []
            for slot, cid in enumerate(inputs.schedule[server_round - 1]):
                cfg = ConfigRecord({**dict(config), "server-round": server_round, "slot": slot,
                                    "cid": int(cid), "inputs": inputs_dir, "model": inputs.model})
                messages.append(Message(content=RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: cfg}),
                                        message_type=MessageType.TRAIN, dst_node_id=nodes[int(cid)]))
            return messages

    server_model = peerlib.build_model(inputs.model, inputs.input_shape, inputs.num_classes)
    peerlib.set_flat(server_model, inputs.params0)

    def evaluate_fn(server_round: int, arrays):
        if server_round == 0:  # Flower also evaluates the initial model; the other peers do not
            return None
        server_model.load_state_dict(arrays.to_torch_state_dict())
        acc, loss = peerlib.evaluate(server_model, inputs.x_test, inputs.y_test, inputs.eval_batch_size)
        record["accuracies"].append(acc)
        record["end"] = time.perf_counter()
        return MetricRecord({"accuracy": acc, "loss": loss})

    server_app = ServerApp()

    @server_app.main()
    def main(grid, context):
        strategy = ScheduledFedAvg(fraction_evaluate=0.0)
        result = strategy.start(grid=grid, initial_arrays=ArrayRecord(server_model.state_dict()),
                                num_rounds=inputs.rounds, evaluate_fn=evaluate_fn)
        record["final"] = result.arrays.to_torch_state_dict()

    client_app = ClientApp()
    client_app.train()(train)
    return server_app, client_app


def main() -> None:
    parser = peerlib.arguments(__doc__)
    parser.add_argument("--actors", type=int, default=1, help="Ray CPUs = actors (one CPU per actor)")
    parser.add_argument("--ray-temp", default=f"/tmp/vsp-ray-{os.getpid()}")
    args = parser.parse_args()
    peerlib.one_thread()
    import flwr
    from flwr.simulation import run_simulation

    inputs_dir = os.path.abspath(args.inputs)
    inputs = peerlib.Inputs(inputs_dir, args.model)
    record: dict = {"accuracies": []}
    server_app, client_app = make_apps(inputs, inputs_dir, record)
    backend_config = {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {"num_cpus": args.actors, "num_gpus": 0, "_temp_dir": args.ray_temp,
                      "include_dashboard": False},
    }
    start = time.perf_counter()
    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=len(inputs.client_sizes),
                   backend_config=backend_config)
    final = record["final"]
    params = np.concatenate([t.reshape(-1).numpy() for t in final.values()]).astype(np.float32)
    peerlib.emit({"peer": f"flower{args.actors}", "framework": f"flwr {flwr.__version__}", "model": args.model,
                  "actors": args.actors, "in_run_s": record["end"] - start,
                  "accuracy": record["accuracies"][-1], "accuracies": record["accuracies"]},
                 params, args.params_out)


if __name__ == "__main__":
    import flower_run  # so that Ray's workers import the ClientApp's functions by name, not by value

    flower_run.main()
