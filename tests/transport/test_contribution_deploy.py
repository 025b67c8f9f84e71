"""Contribution scores deployed (issue 24): the server scores the updates it aggregates, on its own validation
rows, and a deployed run's scores are the simulation's."""

import json

import pytest

from deployment import run_to_end, start_client, start_server
from fedstack.experiment import run_config
from fedstack.plan import load_config
from fedstack.transport.security import make_credentials

OVERRIDES = ["data.name=digits", "data.num_clients=3", "model.name=logreg", "server.rounds=2",
             "server.clients_per_round=3", "server.min_clients=3", "server.max_examples=100000", "seed=5",
             'contribution.method=["shapley","loo","cosine"]', "contribution.validation_examples=300",
             "eval.federated=false"]


def test_a_deployed_run_scores_its_clients_as_the_simulation_does(tmp_path):
    creds = make_credentials(tmp_path / "certs", 3)
    server, port = start_server(tmp_path, creds, OVERRIDES, "--share-seed")
    clients = [start_client(port, creds, i + 1, "--partition", str(i)) for i in range(3)]
    run_to_end(server, clients)
    deployed = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    simulated = run_config(load_config(None, [*OVERRIDES, "engine.name=local"]), tmp_path / "sim")
    assert len(deployed) == 2
    for d, s in zip(deployed, simulated.rounds):
        # the clients' names differ (the registry's against the simulation's ids): compare in client order
        assert len(d["contribution"]["clients"]) == 3
        for method in ("shapley", "loo", "cosine"):
            got = [d["contribution"]["methods"][method]["scores"][str(c)] for c in d["contribution"]["clients"]]
            want = [s["contribution"]["methods"][method]["scores"][str(c)] for c in s["contribution"]["clients"]]
            assert got == pytest.approx(want, abs=1e-9), method
        assert d["contribution"]["utility_after"] == pytest.approx(s["contribution"]["utility_after"], abs=1e-9)
    ledger = (tmp_path / "run" / "contributions.csv").read_text().splitlines()
    assert len(ledger) > 1
