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
