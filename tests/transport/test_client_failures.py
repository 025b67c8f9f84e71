"""What a deployed client says when it cannot take part: data that does not fit the model, a mutual-TLS
server it has no (or a refused) certificate for, tasks that all fail; and a run where no round aggregated."""

import json
import re
import time

import numpy as np
import pytest

from deployment import start_client, start_server
from fedstack.data import ClientData
from fedstack.errors import FedstackError
from fedstack.transport.client import fit_to_model
from fedstack.transport.security import make_credentials

SMALL = ["data.name=digits", "data.num_clients=2", "model.name=logreg"]


def client_data(x, y):
    return ClientData(np.asarray(x, np.float32), np.asarray(y), np.arange(len(y)), np.zeros(0, np.int64))


def test_data_must_fit_the_model():
    flat = client_data(np.arange(6 * 64).reshape(6, 64), [0, 1, 2, 3, 4, 9])
    fitted = fit_to_model(flat, (1, 8, 8), 10, "--data d.csv")  # a CSV's flat rows take the model's shape
    assert fitted.x.shape == (6, 1, 8, 8) and np.array_equal(fitted.x.reshape(6, 64), flat.x)
    with pytest.raises(FedstackError, match=re.escape("--data d.npz: examples of shape (10,), the server's "
                                                      "model takes (1, 8, 8)")):
        fit_to_model(client_data(np.zeros((5, 10)), [0] * 5), (1, 8, 8), 10, "--data d.npz")
    with pytest.raises(FedstackError, match=re.escape("labels 0..10, the server's model has 10 classes")):
        fit_to_model(client_data(np.zeros((2, 1, 8, 8)), [0, 10]), (1, 8, 8), 10, "--data d.npz")


def test_mutual_tls_refusals_and_misfit_data_stop_the_client_with_one_line(tmp_path):
    creds = make_credentials(tmp_path / "certs", 2)
    other = make_credentials(tmp_path / "other-ca", 1)
    np.savez(tmp_path / "narrow.npz", x=np.zeros((50, 10)), y=np.zeros(50, np.int64))
    # min_clients=2: one joining client never starts a round
    server, port = start_server(tmp_path, creds, [*SMALL, "server.clients_per_round=2", "server.min_clients=2"],
                                "--tls-client-ca", str(creds / "ca.pem"))
    try:
        started = time.monotonic()
        clients = {
            "no certificate": start_client(port, creds, 1, "--partition", "0"),
            "another CA's": start_client(port, creds, 1, "--partition", "0", "--cert",
                                         str(other / "client-1.pem"), "--key", str(other / "client-1.key")),
            "another CA's server": start_client(port, creds, 1, "--partition", "0", "--ca", str(other / "ca.pem")),
            "narrow data": start_client(port, creds, 2, "--data", str(tmp_path / "narrow.npz"), "--cert",
                                        str(creds / "client-2.pem"), "--key", str(creds / "client-2.key")),
        }
        results = {what: (c.wait(timeout=60), c.stderr.read()) for what, c in clients.items()}
        elapsed = time.monotonic() - started
    finally:
        server.kill()
        for c in clients.values():
            c.kill()
    _, server_err = server.communicate()
    expected = {"no certificate": "error: the server requires a client certificate: pass --cert and --key",
                "another CA's": "error: the server refused this client's certificate (--cert)",
                "another CA's server": "error: the server's certificate does not verify against --ca",
                "narrow data": f"error: --data {tmp_path / 'narrow.npz'}: examples of shape (10,), the server's "
                               "model takes (1, 8, 8)"}
    for what, (code, err) in results.items():
        assert code == 2, (what, err)
        assert err.startswith(expected[what]) and len(err.strip().splitlines()) == 1, (what, err)
        assert "retrying" not in err
    assert elapsed < 30  # at the first try, not after many retries
    assert "Handshake failed" not in server_err  # gRPC's C core keeps quiet by default


def test_a_client_whose_every_task_fails_says_so_and_the_run_is_degraded(tmp_path):
    creds = make_credentials(tmp_path / "certs", 1)
    # a --state file left from another run: SCAFFOLD's control variate of another model's size
    np.savez(tmp_path / "stale.npz", trainer=np.zeros(3, np.float32))
    server, port = start_server(tmp_path, creds, [*SMALL, "server.clients_per_round=1", "server.min_clients=1",
                                                  "server.rounds=2",
                                                  "server.round_retries=0", "server.strategy=scaffold"],
                                "--deadline", "20", "--heartbeat", "1")
    client = start_client(port, creds, 1, "--partition", "0", "--state", str(tmp_path / "stale.npz"))
    try:
        _, server_err = server.communicate(timeout=120)
        out, err = client.communicate(timeout=60)
    finally:
        server.kill()
        client.kill()
    assert server.returncode == 0, server_err
    assert client.returncode == 1, err
    assert "run over: 0 updates accepted, 0 refused, 2 failed" in out
    assert err.count("WARNING fedstack.client: round ") == 2 and "training failed: ValueError" in err, err
    assert "error: all 2 training tasks failed on this device" in err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "degraded"
    rounds = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["clients"], r["failures"]) for r in rounds] == [(0, 1), (0, 1)]
