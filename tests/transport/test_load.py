"""200 concurrent TLS clients (real gRPC connections from 4 processes) complete 3 rounds with one server."""

import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "deploy_load.py"


def test_two_hundred_clients_complete_three_rounds():
    out = subprocess.run([sys.executable, str(BENCH), "--clients", "200", "--processes", "4", "--rounds", "3"],
                         capture_output=True, text=True, timeout=300, cwd=BENCH.parent)
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    assert "server exit code 0" in out.stdout, out.stdout
    rounds = re.findall(r"round (\d): [\d.]+ s, (\d+) updates, (\d+) failures", out.stdout)
    assert [r[0] for r in rounds] == ["1", "2", "3"], out.stdout
    # every client is accounted for; on a loaded 2-core machine a rare client may miss its heartbeat
    assert all(int(n) + int(f) == 200 and int(n) >= 190 for _, n, f in rounds), out.stdout
