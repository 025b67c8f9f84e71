"""SCAFFOLD with top-k deployed: each device keeps its own control variate and error-feedback residual
(in memory and in its --state file), and the run ends with a simulation's bits."""

import numpy as np

from deployment import start_client, start_server
from fedstack.plan import load_config
from fedstack.experiment import run_config
from fedstack.store import RunStore
from fedstack.transport.security import make_credentials

# Two devices, each its own process (that imports PyTorch): each keeps a state of its own.
OVERRIDES = ["data.name=digits", "data.num_clients=2", "model.name=logreg", "server.rounds=3",
             "server.clients_per_round=2", "server.min_clients=2", "server.strategy=scaffold", "client.lr=0.05",
             'codec.pipeline=["topk"]', "codec.topk_fraction=0.1", "server.max_examples=100000"]


def test_devices_keep_their_control_variates(tmp_path):
    creds = make_credentials(tmp_path / "certs", 2)
    server, port = start_server(tmp_path, creds, OVERRIDES, "--share-seed")
    clients = [start_client(port, creds, i, "--partition", str(i - 1), "--state", str(tmp_path / f"state-{i - 1}.npz"))
               for i in range(1, 3)]
    try:
        _, err = server.communicate(timeout=240)
        assert server.returncode == 0, err
        for c in clients:
            assert c.wait(timeout=60) == 0, c.stderr.read()
    finally:
        for p in [server, *clients]:
            p.kill()
    store = RunStore(tmp_path / "run" / "store.sqlite")
    last, deployed = store.checkpoint()
    assert all(store.get(cid) is None for cid in range(2))  # the server kept none: the devices did
    store.close()
    simulated = run_config(load_config(None, [*OVERRIDES, "engine.name=local"]), tmp_path / "sim")
    assert last == 3 and np.array_equal(deployed, simulated.params)
    # each device's state file holds the control variate the simulation kept for that client in its store
    sim_store = RunStore(tmp_path / "sim" / "store.sqlite")
    for cid in range(2):
        with np.load(tmp_path / f"state-{cid}.npz") as device:
            assert set(device.files) == {"trainer", "codec0.topk"}  # control variate and top-k residual
            for key in device.files:
                assert np.array_equal(device[key], sim_store.get(cid)[key])
    sim_store.close()
