"""The live dashboard (fedstack.dashboard): its HTTP server on real sockets, its event stream, run directories, and
the page in a real headless Chromium (the `browser` and `page` fixtures of tests/conftest.py)."""

import http.client
import json
import math
import os
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

from fedstack.dashboard import Dashboard, RunFeed
from fedstack.dashboard import server as dashboard_server
from fedstack.errors import FedstackError

def record(r: int, **extra) -> dict:
    """A round's record as metrics.jsonl holds it (figures shaped like a real run's)."""
    kinds = {"dropout": r % 2, "deadline": 0, "unavailable": 0, "error": 0, "rejected": 1 if r == 2 else 0}
    reasons = {"undecodable": 0, "shape": 0, "dtype": 0, "non_finite": 0, "weight": 0,
               "norm": 1 if r == 2 else 0, "protocol": 0, "metrics": 0}
    row = {"round": r, "clients": 5, "bytes_up": 276050, "bytes_up_raw": 1104200, "partial": 0,
           "rejected_by_reason": reasons, "failures": sum(kinds.values()), "failures_by_kind": kinds, "sampled": 5,
           "overselected": 0, "bytes_down": 1104200, "bytes_down_raw": 1104200, "train_loss": 1.7 / r, "attempts": 1,
           "fit_metrics_by_client": {"0": {"train_loss": 1.7 / r}}, "sim_time_s": 4.7 * r,
           "test_accuracy": 0.1 + 0.15 * r, "test_loss": 2.1 / r,
           "federated": {"mean": 0.1 * r, "p10": 0.05 * r, "p50": 0.1 * r, "p90": 0.15 * r, "clients": 10,
                         "by_client": {str(i): 0.1 * r for i in range(10)}},
           "epsilon": 0.5 * r, "wall_time_s": 0.3 * r}
    row.update(extra)
    return row


def get(url: str, headers: dict | None = None) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture
def dashboard():
    """Dashboard(address, feeds, token), started; closed at the end of the test."""
    made = []

    def make(feeds, address="127.0.0.1:0", token=None):
        made.append(Dashboard(address, feeds, token=token))
        made[-1].start()
        return made[-1]

    yield make
    for d in made:
        d.close()


# ---- the server ----------------------------------------------------------------------------------------------

def test_a_busy_port_or_a_bad_address_is_refused_in_one_line_before_serving():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        address = f"127.0.0.1:{busy.getsockname()[1]}"
        with pytest.raises(FedstackError) as caught:
            Dashboard(address, [])
        assert str(caught.value) == f"--dashboard {address}: the port is in use"
    for bad in ("nonsense", "127.0.0.1:70000", "::1:8050", "127.0.0.1:"):
        with pytest.raises(FedstackError, match="--dashboard .*expected \\[HOST:\\]PORT") as caught:
            Dashboard(bad, [])
        assert bad in str(caught.value) and "\n" not in str(caught.value)


def test_a_non_loopback_address_wants_a_token():
    with pytest.raises(FedstackError, match="0.0.0.0:0.*give a token") as caught:
        Dashboard("0.0.0.0:0", [])
    assert "\n" not in str(caught.value)
    with Dashboard("0.0.0.0:0", [], token="s3cret") as open_to_all:  # a token: allowed (not started)
        assert open_to_all.port > 0 and open_to_all.url.endswith("/?token=s3cret")
    with Dashboard("localhost:0", []) as local:
        assert local.host == "localhost" and local.url == f"http://localhost:{local.port}/"


def test_a_token_guards_every_path_but_healthz(dashboard):
    feed = RunFeed("run", 3)
    feed.add(record(1, test_loss=math.nan, epsilon=math.inf))
    d = dashboard([feed], token="s3cret/+")
    base = f"http://127.0.0.1:{d.port}"
    assert d.url == f"{base}/?token=s3cret%2F%2B"
    assert get(f"{base}/api/state")[0] == 401
    assert get(f"{base}/api/state?token=wrong")[0] == 401
    assert get(f"{base}/")[0] == 401
    assert get(f"{base}/api/state", {"Authorization": "Bearer nope"})[0] == 401
    assert get(f"{base}/healthz") == (200, b"ok\n")
    status, body = get(f"{base}/api/state?token=s3cret%2F%2B")
    assert status == 200
    state = json.loads(body)  # strict JSON: the NaN and the infinity travel as null
    assert state["runs"][0]["records"][0]["test_loss"] is None and state["runs"][0]["records"][0]["epsilon"] is None
    assert "by_client" not in state["runs"][0]["records"][0]["federated"]  # per-client figures stay out
    assert get(f"{base}/api/state", {"Authorization": "Bearer s3cret/+"})[0] == 200
    status, body = get(d.url)
    assert status == 200 and b'id="round-counter"' in body
    assert get(f"{base}/nowhere?token=s3cret%2F%2B")[0] == 404
    assert get(f"{base}/favicon.ico")[0] == 204


def test_without_a_token_only_a_loopback_host_name_is_answered(dashboard):
    d = dashboard([RunFeed("run", 3)])
    base = f"http://127.0.0.1:{d.port}"
    assert get(f"{base}/api/state")[0] == 200
    assert get(f"{base}/api/state", {"Host": f"localhost:{d.port}"})[0] == 200
    assert get(f"{base}/api/state", {"Host": f"evil.example:{d.port}"})[0] == 403  # DNS rebinding


def test_events_stream_rounds_and_the_end_and_close_sends_what_was_queued(dashboard):
    feed = RunFeed("run", 2)
    d = dashboard([RunFeed("other", 1), feed])
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=5)
    conn.request("GET", "/api/events")
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("Content-Type") == "text/event-stream"
    assert resp.readline() == b"retry: 2000\n" and resp.readline().startswith(b":")

    def next_event():
        event = None
        while True:
            line = resp.readline().decode()
            if line.startswith("event: "):
                event = line[7:].strip()
            elif line.startswith("data: "):
                return event, json.loads(line[6:])

    deadline = time.monotonic() + 5
    while not d._listeners and time.monotonic() < deadline:
        time.sleep(0.01)
    feed.add(record(1))
    event, data = next_event()
    assert event == "round" and data["run"] == 1 and data["index"] == 0 and data["record"]["round"] == 1
    feed.finish("finished")
    d.close()  # what was queued still goes out, then the stream ends
    event, data = next_event()
    assert event == "status" and data == {"run": 1, "status": "finished", "finished_at": feed.finished_at}
    assert resp.read() == b"\n"  # the end of the status event, then the end of the stream
    conn.close()


def test_a_page_that_does_not_read_never_holds_up_the_round_loop(dashboard, monkeypatch):
    monkeypatch.setattr(dashboard_server, "QUEUE_EVENTS", 16)
    feed = RunFeed("run", 4000)
    d = dashboard([feed])
    stuck = socket.socket()
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.connect(("127.0.0.1", d.port))
    stuck.sendall(b"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")  # and never reads
    deadline = time.monotonic() + 5
    while not d._listeners and time.monotonic() < deadline:
        time.sleep(0.01)
    assert d._listeners
    padding = "x" * 4000
    started = time.perf_counter()
    for r in range(1, 3001):
        feed.add(record(r, note=padding))
    assert time.perf_counter() - started < 3.0
    assert not d._listeners  # dropped: its page reconnects and reloads the state
    stuck.close()


def test_a_worker_forked_while_the_dashboard_listens_holds_no_copy_of_its_socket():
    with Dashboard("127.0.0.1:0", []) as d:
        pid = os.fork()
        if pid == 0:  # the worker
            os._exit(0 if d._server.socket.fileno() == -1 else 1)
        assert os.waitpid(pid, 0)[1] == 0
        assert d._server.socket.fileno() != -1


def test_run_feed_from_a_run_directory(tmp_path):
    run = tmp_path / "20260101-120000"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(record(r)) + "\n" for r in (1, 2, 3)))
    config = {"server": {"rounds": 3, "strategy": "fedprox"}, "privacy": {"epsilon_budget": 4.0}}
    (run / "summary.json").write_text(json.dumps({"status": "stopped", "rounds": 3, "final": {"wall_time_s": 0.9},
                                                  "total_time_s": 2.5, "config": config}))
    snap = RunFeed.from_run_dir(run).snapshot()
    assert len(snap["records"]) == 3 and [r["round"] for r in snap["records"]] == [1, 2, 3]
    assert (snap["name"], snap["status"], snap["rounds_total"], snap["strategy"], snap["epsilon_budget"]) == \
        ("20260101-120000", "stopped", 3, "fedprox", 4.0)
    assert snap["finished_at"] - snap["started_at"] == pytest.approx(2.5) and snap["server"] is None
    json.dumps(snap, allow_nan=False)

    missing = tmp_path / "no-such-run"
    with pytest.raises(FedstackError, match=f"{missing}: no such run directory"):
        RunFeed.from_run_dir(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FedstackError, match=f"{empty}: not a run directory \\(metrics.jsonl is missing\\)"):
        RunFeed.from_run_dir(empty)
    (empty / "metrics.jsonl").write_text("")
    with pytest.raises(FedstackError, match="summary.json and config.toml are missing"):
        RunFeed.from_run_dir(empty)
    (empty / "config.toml").write_text("[server]\nrounds = 7\n")  # killed before its summary: still shown
    killed = RunFeed.from_run_dir(empty)
    assert (killed.status, killed.rounds_total, killed.records) == ("interrupted", 7, [])


# ---- the page, in a real browser -----------------------------------------------------------------------------

def counter_is(text: str) -> str:
    return f"() => document.getElementById('round-counter').textContent === {json.dumps(text)}"


def test_the_page_follows_a_live_run(dashboard, page, tmp_path):
    feed = RunFeed("live-run", 5, strategy="fedavg", epsilon_budget=3.0)
    d = dashboard([feed], token="t0ken")
    page.goto(d.url)
    page.wait_for_function(counter_is("0 / 5"))
    assert page.text_content("#status") == "starting"

    def rounds():
        for r in range(1, 6):
            time.sleep(0.3)
            feed.add(record(r))
        feed.finish("finished")

    adder = threading.Thread(target=rounds)
    adder.start()
    try:
        page.wait_for_function(counter_is("3 / 5"), timeout=10_000)
        assert page.text_content("#status") == "running"
        page.wait_for_function(counter_is("5 / 5"), timeout=10_000)
        page.wait_for_function("() => document.getElementById('status').textContent === 'finished'")
    finally:
        adder.join()
    assert page.locator("#chart-accuracy path").count() >= 2  # test accuracy, the federated band and median
    assert page.locator("#chart-privacy path").count() == 1 and page.is_hidden("#no-privacy")
    assert page.locator("#chart-refusals rect").count() == 1  # round 2's refused update
    assert "×4.00" in page.text_content("#figures-communication")
    assert page.is_hidden("#panel-clients") and page.is_hidden("#panel-staleness")  # synchronous: no staleness
    shot = tmp_path / "dashboard.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.exists() and shot.stat().st_size > 20_000
    assert page.errors == []


def test_an_asynchronous_run_shows_the_staleness_of_its_updates(dashboard, page):
    feed = RunFeed("async-run", 3, strategy="fedbuff")
    for r in range(1, 4):
        feed.add({**record(r), "staleness_mean": 0.5 * r, "staleness_max": r + 1})
    feed.finish("finished")
    d = dashboard([feed])
    page.goto(d.url)
    page.wait_for_function(counter_is("3 / 3"))
    assert page.is_visible("#panel-staleness")
    assert page.locator("#chart-staleness path").count() == 2  # mean and most
    figures = page.text_content("#figures-staleness")
    assert "1" in figures and "4" in figures  # mean over the run 1, most 4
    assert page.errors == []


def test_the_page_lists_a_deployed_servers_clients(dashboard, page, monkeypatch):
    monkeypatch.setattr(dashboard_server, "SERVER_EVERY_S", 0.2)
    connected = [{"client": "alice", "state": "training", "last_seen_s": 0.4, "rounds": 7, "refused": 0,
                  "uplink_bytes_per_s": 2.5e6},
                 {"client": "bob", "state": "lost", "last_seen_s": 3.2, "rounds": 2, "refused": 3,
                  "uplink_bytes_per_s": None}]
    feed = RunFeed("deployed-run", 10, mode="deployed")
    feed.server_info = lambda: {"connected": list(connected), "registered": 3, "refused": {"size": 2, "malformed": 1},
                                "round": 1}
    d = dashboard([feed])
    page.goto(d.url)
    page.wait_for_selector("#clients-table >> text=bob")
    table = page.text_content("#clients-table")
    assert "alice" in table and "training" in table and "bob" in table and "lost" in table
    rows = [page.locator("#clients-table tbody tr").nth(i).locator("td").all_text_contents() for i in range(2)]
    assert rows[0][3:] == ["7", "0", "2.5 MB/s"] and rows[1][3:] == ["2", "3", "—"]
    assert "size 2" in page.text_content("#refusals-clients")
    assert page.text_content("#no-privacy") == "no differential privacy" and page.is_visible("#no-privacy")
    connected.append({"client": "carol", "state": "connecting", "last_seen_s": 0.0})  # the next push shows it
    page.wait_for_selector("#clients-table >> text=carol", timeout=5_000)
    assert page.errors == []


def test_the_page_compares_finished_runs(dashboard, page, tmp_path):
    feeds = []
    for name, rounds in (("run-a", 3), ("run-b", 4)):
        run = tmp_path / name
        run.mkdir()
        (run / "metrics.jsonl").write_text("".join(json.dumps(record(r)) + "\n" for r in range(1, rounds + 1)))
        (run / "summary.json").write_text(json.dumps({"status": "finished", "rounds": rounds, "final": {},
                                                      "config": {"server": {"rounds": rounds}}}))
        feeds.append(RunFeed.from_run_dir(run))
    d = dashboard(feeds)
    page.goto(d.url)
    page.wait_for_function(counter_is("3 / 3"))
    assert page.is_visible("#run-picker")
    assert page.locator("#chart-accuracy path").count() == 2  # one line per run
    assert "run-b" in page.text_content("#legend-accuracy")
    page.select_option("#run-picker", "1")
    page.wait_for_function(counter_is("4 / 4"))
    assert page.text_content("#run-name") == "run-b"
    assert page.errors == []

