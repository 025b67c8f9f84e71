"""docs/first-hour.md, run as written: every bash block on the page, from the repository's root, in order.

A block preceded by an HTML comment starting "not run by the suite" is skipped (the comment says which
test covers it). The page's own commands keep the runs small; this test adds nothing to them.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "first-hour.md"


def blocks(text: str) -> list[str]:
    """The page's bash blocks that the suite runs, in order."""
    found = []
    for match in re.finditer(r"(<!--[^\n]*-->\n)?```bash\n(.*?)```", text, re.S):
        if match.group(1) and "not run by the suite" in match.group(1):
            continue
        found.append(match.group(2))
    return found


def test_the_first_hour_page_runs_as_written():
    steps = blocks(PAGE.read_text())
    assert len(steps) >= 5
    venv = Path(sys.executable).parent  # the environment running the suite is the one `make setup` made
    env = {**os.environ, "PATH": f"{venv}{os.pathsep}{os.environ['PATH']}", "VIRTUAL_ENV": str(venv.parent)}
    shutil.rmtree(ROOT / "runs" / "first-hour", ignore_errors=True)
    outputs = []
    try:
        for step in steps:
            # `source .venv/bin/activate` needs the project's .venv; the suite's may live elsewhere (CI's clone
            # has its own at the root, so this only matters when the suite runs from another environment)
            script = step if (ROOT / ".venv" / "bin" / "activate").exists() else \
                step.replace("source .venv/bin/activate", ":")
            proc = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=ROOT, env=env, capture_output=True,
                                  text=True, timeout=300)
            assert proc.returncode == 0, f"{step}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
            outputs.append(proc.stdout + proc.stderr)
    finally:
        shutil.rmtree(ROOT / "runs" / "first-hour", ignore_errors=True)
    install, run, refuse, own_model, bad = outputs
    assert re.search(r"^fedstack \d+\.\d+", install, re.M), install
    assert "final test accuracy" in run and (ROOT / "docs" / "first-hour.md").exists()
    assert "config key 'server.rounds' was 5, this one's is 6" in refuse and "exit code 2" in refuse
    assert re.search(r"round +3 +test accuracy", own_model), own_model
    errors = [line for line in bad.splitlines() if line.startswith("error:")]
    assert len(errors) == 3 and bad.count("exit code 2") == 3 and "Traceback" not in bad, bad
    assert "server.rounds" in errors[0] and "/nonexistent" in errors[1] and "model.name" in errors[2]
