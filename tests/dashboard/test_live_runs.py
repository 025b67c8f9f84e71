"""`fedstack run --dashboard` end to end: a real run in a subprocess serves its dashboard on a free loopback port, a
real headless Chromium watches the round counter advance while the run proceeds; bad dashboard addresses are one
line and exit code 2 before any training."""

import re
import socket
import subprocess
import sys

ROUNDS = 40
RUN = ["data.name=digits", f"server.rounds={ROUNDS}", "client.epochs=3", "eval.federated=false"]

# Every value the round counter shows, as the page changes it (recorded in the page, so none is missed).
WATCH_COUNTER = """
window.__counter = [];
new MutationObserver(() => {
  const node = document.getElementById('round-counter');
  const seen = window.__counter;
  if (node && seen[seen.length - 1] !== node.textContent) seen.push(node.textContent);
}).observe(document, {subtree: true, childList: true, characterData: true});
"""


def fedstack_run(tmp_path, *extra):
    sets = [a for o in RUN for a in ("--set", o)]
    return subprocess.Popen([sys.executable, "-m", "fedstack.cli", "run", "--quiet", "--out", str(tmp_path / "run"),
                             *sets, *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_the_dashboard_follows_a_real_run_in_a_real_browser(tmp_path, page):
    run = fedstack_run(tmp_path, "--dashboard", "127.0.0.1:0")
    try:
        line = run.stdout.readline()
        found = re.match(r"dashboard: (http://127\.0\.0\.1:\d+/)\s*$", line)
        assert found, line + run.stderr.read()
        page.add_init_script(WATCH_COUNTER)
        page.goto(found.group(1))  # the port is bound already; the page is served once the engine has started
        page.wait_for_function("() => document.getElementById('status').textContent === 'finished'", timeout=120_000)
        page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
        assert run.wait(timeout=120) == 0, run.stderr.read()
    finally:
        run.kill()
    seen = page.evaluate("window.__counter")
    rounds = [int(text.split("/")[0]) for text in seen if re.fullmatch(r"\d+ / 40", text)]
    assert rounds[-1] == ROUNDS, seen
    # The counter advanced while the run proceeded: several values on the way, in order.
    assert len(set(rounds)) >= 3 and rounds == sorted(rounds), seen
    assert page.errors == []
    assert (tmp_path / "dashboard.png").stat().st_size > 20_000
    assert page.locator("#chart-accuracy path").count() > 0


def test_a_busy_port_or_an_open_address_without_token_is_one_line_before_training(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        address = f"127.0.0.1:{busy.getsockname()[1]}"
        run = fedstack_run(tmp_path, "--dashboard", address)
        out, err = run.communicate(timeout=120)
    assert run.returncode == 2 and err.strip().splitlines() == [f"error: --dashboard {address}: the port is in use"]
    run = fedstack_run(tmp_path, "--dashboard", "0.0.0.0:0")
    out, err = run.communicate(timeout=120)
    assert run.returncode == 2 and len(err.strip().splitlines()) == 1 and "give a token" in err, err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
