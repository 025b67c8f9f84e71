"""What watching a run costs: the default `fedstack run` with and without tracking and the live dashboard.

Runs the real command (a subprocess each, as a user would) alternately plain and "watched" — TensorBoard event
files, an MLflow run in a SQLite store, and `--dashboard` on a free loopback port with a listener reading its
event stream the whole run (what an open browser tab does) — and prints each pair's wall times and the median
ratio watched / plain, of the rounds' wall time (metrics.jsonl's wall_time_s) and of the whole command. Goal:
≤ 1.03.

    python benchmarks/monitoring.py [--repeats 3] [--rounds 20] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

FEDSTACK = [sys.executable, "-m", "fedstack.cli"]
WATCHED = ["--set", "tracking.tensorboard=true", "--set", "tracking.mlflow=true", "--dashboard", "127.0.0.1:0"]


def listen(url: str, events: list) -> None:
    """Read the dashboard's event stream until it closes, as an open page does."""
    try:
        with urllib.request.urlopen(url.split("?")[0].rstrip("/") + "/api/events", timeout=600) as stream:
            for line in stream:
                if line.startswith(b"event:"):
                    events.append(line)
    except OSError:
        pass  # the run ended and took its dashboard with it


def run_once(out: Path, rounds: int, overrides: list[str], watched: bool) -> dict:
    """One `fedstack run`; returns its rounds' and its command's wall time (and the events a listener saw)."""
    command = [*FEDSTACK, "run", "--quiet", "--out", str(out), "--set", f"server.rounds={rounds}", *overrides]
    if watched:
        command += WATCHED
    events: list = []
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = []
    for line in process.stdout:
        output.append(line)
        found = re.match(r"dashboard: (\S+)", line)
        if found:
            threading.Thread(target=listen, args=(found.group(1), events), daemon=True).start()
    if process.wait() != 0:
        raise SystemExit("".join(output[-20:]))
    command_s = time.perf_counter() - started
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {"rounds_s": records[-1]["wall_time_s"], "command_s": command_s, "events": len(events)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    overrides = [arg for pair in args.overrides for arg in ("--set", pair)]
    ratios_rounds, ratios_command = [], []
    print(f"default run, {args.rounds} rounds {' '.join(args.overrides)}; watched = {' '.join(WATCHED)}")
    print(f"{'pair':>4}  {'plain rounds s':>14}  {'watched rounds s':>16}  {'plain cmd s':>11}  "
          f"{'watched cmd s':>13}  {'events':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            # Alternate which goes first: a machine's drift (caches, other load) weighs on both alike.
            order = (False, True) if i % 2 == 0 else (True, False)
            result = {watched: run_once(Path(tmp) / f"{i}-{watched}", args.rounds, overrides, watched)
                      for watched in order}
            plain, watched = result[False], result[True]
            ratios_rounds.append(watched["rounds_s"] / plain["rounds_s"])
            ratios_command.append(watched["command_s"] / plain["command_s"])
            print(f"{i + 1:>4}  {plain['rounds_s']:>14.2f}  {watched['rounds_s']:>16.2f}  {plain['command_s']:>11.2f}"
                  f"  {watched['command_s']:>13.2f}  {watched['events']:>6}")
    rounds_ratio, command_ratio = statistics.median(ratios_rounds), statistics.median(ratios_command)
    print(f"median ratio watched / plain: rounds' wall time {rounds_ratio:.3f}, whole command {command_ratio:.3f}")
    print(f"goal rounds' wall time within 3%: {'met' if rounds_ratio <= 1.03 else 'NOT met'}")
    print(f"goal whole command within 3%: {'met' if command_ratio <= 1.03 else 'NOT met'}")


if __name__ == "__main__":
    main()
