"""An operator watching a deployed server (issue 23): `fedstack server --dashboard --metrics-port` as a subprocess on
loopback with two real clients; Prometheus's /metrics scraped while the rounds go by (counters moving), `fedstack
status` in the terminal and as JSON (with and without the operator's token), and the deployed view in a real
headless Chromium (the clients table follows them joining, and shows one killed mid-run as lost within three
heartbeats while the other trains on)."""

import json
import re
import subprocess
import sys
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from fedstack.transport.security import make_credentials

RUN = ["data.name=digits", "data.num_clients=2", "data.partition=iid", "server.clients_per_round=2",
       "server.min_clients=1", "server.rounds=12", "client.epochs=4", "eval.federated=false"]
HEARTBEAT_S = 1.0
PAGE_EVERY_S = 2.0  # how often the dashboard pushes a deployed server's clients to its pages
TOKEN = "operator-s3cret"


def cli(*args):
    return [sys.executable, "-m", "fedstack.cli", *args]


def scrape(url: str) -> dict[str, float]:
    """Every sample of /metrics by name (labels joined in): {"fedstack_rounds_completed_total": 3.0, ...}."""
    with urllib.request.urlopen(url, timeout=5) as answer:
        text = answer.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
    return samples


def status(address, *extra):
    return subprocess.run(cli("status", "--server", address, *extra), capture_output=True, text=True, timeout=60)


def test_an_operator_watches_a_deployed_server(tmp_path, page):
    creds = make_credentials(tmp_path / "certs", 2)
    token = tmp_path / "operator.token"
    token.write_text(TOKEN)
    sets = [a for o in RUN for a in ("--set", o)]
    server = subprocess.Popen(cli("server", *sets, "--clients", str(creds / "clients.toml"), "--listen", "127.0.0.1:0",
                                  "--insecure", "--out", str(tmp_path / "run"), "--quiet", "--dashboard", "127.0.0.1:0",
                                  "--dashboard-token-file", str(token), "--metrics-port", "127.0.0.1:0",
                                  "--heartbeat", str(HEARTBEAT_S)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    clients = []
    try:
        port = int(server.stdout.readline().rsplit(":", 1)[1])
        url = re.match(r"dashboard: (\S+)", server.stdout.readline()).group(1)
        metrics = re.match(r"Prometheus metrics on (\S+)", server.stdout.readline()).group(1)
        address = url.split("//")[1].split("/")[0]
        assert url.endswith(f"?token={TOKEN}")

        # Before any client: nothing connected, no round; the token guards the state.
        before = scrape(metrics)
        assert before["fedstack_connected_clients"] == 0 and before["fedstack_registered_clients"] == 2
        assert before["fedstack_rounds_completed_total"] == 0
        refused = status(address)
        assert refused.returncode == 2 and refused.stderr.strip() == \
            f"error: --server {address}: the token is missing or wrong (--token-file)"
        state = json.loads(status(address, "--token-file", str(token), "--json").stdout)
        (run,) = state["runs"]
        assert run["mode"] == "deployed" and run["rounds_total"] == 12 and run["records"] == []
        assert [(c["client"], c["state"]) for c in run["server"]["connected"]] == \
            [("client-1", "offline"), ("client-2", "offline")]

        page.goto(url)
        page.wait_for_function("() => document.getElementById('clients-table').textContent.includes('client-2')")
        clients = [subprocess.Popen(cli("client", "--server", f"127.0.0.1:{port}", "--token-file",
                                        str(creds / f"client-{i}.token"), "--partition", str(i - 1), "--insecure"),
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in (1, 2)]
        # The page's table follows the clients joining (it said offline before).
        page.wait_for_function("() => !document.getElementById('clients-table').textContent.includes('offline')",
                               timeout=60_000)
        table = status(address, "--token-file", str(token))
        assert table.returncode == 0 and "client-1" in table.stdout and "of 2" in table.stdout, table.stderr

        seen = []  # (rounds completed, clients connected, bytes up) at each scrape while the server runs
        lost_after = None  # seconds from killing client-2 to the page showing it lost
        while server.poll() is None:
            try:
                now = scrape(metrics)
            except OSError:
                break  # the run is over and took its metrics with it
            seen.append((now["fedstack_rounds_completed_total"], now["fedstack_connected_clients"],
                         now['fedstack_bytes_total{direction=up}']))
            if lost_after is None and seen[-1][0] >= 3:
                # client-2 dies mid-run: the page shows it lost within three heartbeats (and one push of the
                # page's client list); client-1 trains on alone
                table = status(address, "--token-file", str(token), "--json")
                served = {c["client"]: c for c in json.loads(table.stdout)["runs"][0]["server"]["connected"]}
                assert all(served[c]["rounds"] >= 1 and served[c]["uplink_bytes_per_s"] > 0 and
                           served[c]["refused"] == 0 for c in ("client-1", "client-2")), served
                clients[1].kill()
                killed = time.monotonic()
                page.wait_for_function("() => [...document.querySelectorAll('#clients-table tr')].some((tr) => "
                                       "tr.textContent.startsWith('client-2') && tr.textContent.includes('lost'))",
                                       timeout=30_000)
                lost_after = time.monotonic() - killed
            time.sleep(0.1)
        page.wait_for_function("() => document.getElementById('status').textContent === 'finished'")
        assert server.wait(timeout=120) == 0, server.stderr.read()
        assert clients[0].wait(timeout=60) == 0, clients[0].stderr.read()
    finally:
        for p in [server, *clients]:
            p.kill()
    rounds = [r for r, _, _ in seen]
    assert rounds == sorted(rounds) and len(set(rounds)) >= 2 and rounds[-1] > 0, seen  # the counters moved
    assert max(c for _, c, _ in seen) == 2
    assert all(b > 0 for r, _, b in seen if r > 0)
    assert lost_after is not None and lost_after <= 3 * HEARTBEAT_S + PAGE_EVERY_S + 1.0, lost_after
    assert page.text_content("#round-counter") == "12 / 12"
    assert page.errors == []


def test_a_busy_metrics_port_or_a_silent_address_is_one_line(tmp_path):
    import socket

    creds = make_credentials(tmp_path / "certs", 2)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        server = subprocess.run(cli("server", "--clients", str(creds / "clients.toml"), "--listen", "127.0.0.1:0",
                                    "--insecure", "--out", str(tmp_path / "run"), "--metrics-port", str(taken)),
                                capture_output=True, text=True, timeout=60)
        silent = status(f"127.0.0.1:{taken}", "--timeout", "1")  # listening, never answering
    assert server.returncode == 2 and server.stdout == ""
    assert server.stderr.strip().splitlines()[-1] == \
        f"error: --metrics-port {taken}: cannot listen on 127.0.0.1:{taken} (Address already in use)"
    assert silent.returncode == 2 and silent.stderr.startswith(f"error: --server 127.0.0.1:{taken}: no dashboard")
