"""A deployment rides out what real fleets do: a client that goes silent and comes back, and a server
interrupted with Ctrl-C and started again, all without the clients' processes being restarted."""

import json
import signal
import time
from concurrent.futures import ThreadPoolExecutor

from deployment import start_client, start_server
from fedstack.transport.security import make_credentials

RUN = ["data.name=digits", "data.num_clients=2", "model.name=logreg", "server.rounds=8",
       "server.clients_per_round=2", "server.min_clients=2", "eval.every=0", "eval.federated=false",
       "client.epochs=3"]


def rounds_done(metrics, n, procs, timeout=120):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if metrics.exists() and metrics.read_text().count("\n") >= n:
            return
        assert all(p.poll() is None for p in procs), [p.args for p in procs if p.poll() is not None]
        time.sleep(0.05)
    raise AssertionError(f"no round {n} within {timeout} s")


def test_an_outage_and_an_interrupted_server_cost_no_round(tmp_path):
    creds = make_credentials(tmp_path / "certs", 2)
    server, port = start_server(tmp_path, creds, RUN, "--heartbeat", "1", "--deadline", "60")
    clients = [start_client(port, creds, i, "--partition", str(i - 1)) for i in (1, 2)]
    metrics = tmp_path / "run" / "metrics.jsonl"
    try:
        rounds_done(metrics, 1, [server, *clients])
        clients[1].send_signal(signal.SIGSTOP)  # a device goes silent mid-run (lost for 3 heartbeats) ...
        time.sleep(4)
        clients[1].send_signal(signal.SIGCONT)  # ... and comes back
        rounds_done(metrics, 4, [server, *clients])
        server.send_signal(signal.SIGINT)  # Ctrl-C: the clients must not be sent home
        assert server.wait(timeout=30) == 130
        # The server is started again at once (seconds of imports before it listens, while the clients back
        # off); meanwhile, 1.5 s after the interrupted one exited, no client has given up on it.
        with ThreadPoolExecutor(1) as pool:
            restarted = pool.submit(start_server, tmp_path, creds, RUN, "--heartbeat", "1", "--deadline", "60",
                                    listen=f"127.0.0.1:{port}")
            time.sleep(1.5)
            stayed = all(c.poll() is None for c in clients)
            server, _ = restarted.result()
        assert stayed, "a client gave up on an interrupted server"
        _, err = server.communicate(timeout=180)
        assert server.returncode == 0, err
        for c in clients:  # a finished run sends them home
            assert c.wait(timeout=30) == 0, c.stderr.read()
    finally:
        for p in [server, *clients]:
            p.kill()
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["round"] for r in records] == list(range(1, 9))
    assert all(r["clients"] == 2 for r in records), [(r["round"], r["clients"], r["attempts"]) for r in records]
