import runpy
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_custom_torch_model_example_learns():
    out = subprocess.run([sys.executable, str(EXAMPLES / "custom_model.py"), "15"], capture_output=True,
                         text=True, timeout=300, cwd=EXAMPLES)
    assert out.returncode == 0, out.stderr
    last = [line for line in out.stdout.splitlines() if line.startswith("round")][-1]
    assert float(last.split()[-1]) > 0.8, out.stdout


def test_numpy_trainer_example_learns():
    module = runpy.run_path(str(EXAMPLES / "numpy_logreg.py"))
    history = module["main"](20)
    assert history.rounds[-1]["test_accuracy"] > 0.8
    assert history.rounds[-1]["test_accuracy"] > history.rounds[0]["test_accuracy"]


def test_deploy_example_runs_a_server_and_three_clients(tmp_path):
    import json
    import os
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "FEDSTACK": f"{sys.executable} -m fedstack.cli", "PYTHON": sys.executable,
           "PORT": str(port)}
    out = subprocess.run(["bash", str(EXAMPLES / "deploy" / "run.sh"), str(tmp_path)], capture_output=True,
                         text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    rounds = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rounds) == 5 and all(r["clients"] == 3 for r in rounds)
    assert rounds[-1]["test_accuracy"] > 0.7
