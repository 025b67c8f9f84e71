"""Install what you use: fedstack's core works without its extras, and a missing extra is one line.

The subprocesses here run with torch, tenseal, opacus, dp_accounting, ray, matplotlib, scikit-learn, pandas
and the export libraries made unimportable (a meta path finder in front of every other), as in an
environment of `pip install fedstack` alone; benchmarks/env_size.py measures such an environment's size."""

import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

from fedstack.extras import MissingExtra, require

ROOT = Path(__file__).resolve().parent.parent
# What the core must do without: every extra's packages, by the name they are imported as.
EXTRA_MODULES = ("torch", "tenseal", "opacus", "dp_accounting", "ray", "matplotlib", "sklearn", "scipy", "pandas",
                 "safetensors", "onnx", "onnxruntime", "keras")

WITHOUT_EXTRAS = f"""
import importlib.abc, sys

class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {EXTRA_MODULES!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)

sys.meta_path.insert(0, NotInstalled())
"""

# A user's model in plain NumPy: multinomial logistic regression as a fedstack.Trainer.
NUMPY_MODEL = """
import numpy as np

import fedstack
from fedstack.client import batch_order


class Softmax(fedstack.Trainer):
    def __init__(self, features, classes):
        self.features, self.classes = features, classes

    def get_params(self):
        return np.zeros(self.features * self.classes + self.classes, np.float32)

    def _probabilities(self, params, x):
        w = params[: self.features * self.classes].reshape(self.features, self.classes)
        logits = x.reshape(len(x), -1) @ w + params[self.features * self.classes:]
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        return p / p.sum(axis=1, keepdims=True)

    def fit(self, params, data, config, state=None):
        local = params.copy()
        for batch in batch_order(data.train_idx, config):
            x, y = data.x[batch].reshape(len(batch), -1), data.y[batch]
            g = self._probabilities(local, x)
            g[np.arange(len(y)), y] -= 1
            g /= len(y)
            local[: self.features * self.classes] -= config.lr * (x.T @ g).ravel()
            local[self.features * self.classes:] -= config.lr * g.sum(axis=0)
        return fedstack.FitResult(update=local - params, num_examples=len(data.train_idx))

    def evaluate(self, params, x, y):
        p = self._probabilities(params, x)
        return fedstack.EvalResult(float(-np.log(p[np.arange(len(y)), y] + 1e-12).sum()),
                                   int((p.argmax(1) == y).sum()), len(y))


def model():  # model.name = "npmodel:model"; the synthetic data set: 60 features, 10 classes
    return Softmax(60, 10)
"""

NUMPY_RUN = ["--set", "model.name=npmodel:model", "--set", "data.name=synthetic", "--set", "data.partition=iid",
             "--set", "data.num_clients=4", "--set", "server.clients_per_round=2", "--set", "server.rounds=2"]


def without_extras(code: str, *args: str, cwd=None, timeout: float = 60) -> subprocess.CompletedProcess:
    """`code` run by a fresh interpreter in which no extra's package imports."""
    return subprocess.run([sys.executable, "-c", WITHOUT_EXTRAS + textwrap.dedent(code), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def fedstack_without_extras(*args: str, cwd=None, timeout: float = 60) -> subprocess.CompletedProcess:
    """The `fedstack` command, without the extras."""
    return without_extras("from fedstack.cli import main\nsys.exit(main(sys.argv[1:]))", *args, cwd=cwd,
                          timeout=timeout)


@pytest.fixture
def project(tmp_path):
    (tmp_path / "npmodel.py").write_text(NUMPY_MODEL)
    return tmp_path


def test_core_imports_and_cli_without_the_extras():
    out = without_extras("""
        import fedstack, fedstack.cli, fedstack.config, fedstack.plan, fedstack.experiment, fedstack.report
        import fedstack.transport.client, fedstack.transport.server, fedstack.secagg.remote, fedstack.codec.ckks
        import fedstack.dp.accounting, fedstack.dp.dp_sgd, fedstack.he, fedstack.engine, fedstack.export
        assert not any(m.partition(".")[0] in BLOCKED for m in sys.modules)
        print("imported")
    """.replace("BLOCKED", repr(EXTRA_MODULES)))
    assert out.returncode == 0 and out.stdout == "imported\n", out.stderr
    helped = fedstack_without_extras("--help")
    assert helped.returncode == 0 and "client" in helped.stdout, helped.stderr
    helped = fedstack_without_extras("client", "--help")
    assert helped.returncode == 0 and "--server" in helped.stdout, helped.stderr


def test_a_numpy_trainer_named_by_the_config_trains_without_torch(project):
    out = without_extras("""
        import numpy as np
        from fedstack.config import load_config
        from fedstack.data import ClientData
        from fedstack.client import FitConfig
        from fedstack.plan import initial_params, trainer_factory

        config = load_config(None, ["model.name=npmodel:model"])
        factory = trainer_factory(config, (60,), 10)
        params = initial_params(factory, seed=0)
        rng = np.random.default_rng(0)
        x, y = rng.normal(size=(40, 60)).astype(np.float32), rng.integers(0, 10, 40)
        result = factory().fit(params, ClientData(x, y, np.arange(40), np.arange(0)), FitConfig(lr=0.1, seed=1))
        assert result.update.shape == params.shape and np.abs(result.update).sum() > 0
        assert "torch" not in sys.modules
        print(type(factory()).__name__, result.num_examples)
    """, cwd=project)
    assert out.returncode == 0 and out.stdout == "Softmax 40\n", out.stderr


@pytest.mark.parametrize("engine", ["local", "pool"])
def test_a_numpy_model_runs_without_torch_or_matplotlib(project, engine):
    out = fedstack_without_extras("run", *NUMPY_RUN, "--set", f"engine.name={engine}", "--out",
                                  str(project / "run"), cwd=project)
    assert out.returncode == 0, out.stderr
    assert (project / "run" / "summary.json").is_file() and not (project / "run" / "report.png").exists()
    assert out.stderr.strip().splitlines() == ["WARNING fedstack.report: the report's plot needs matplotlib: "
                                               "pip install 'fedstack[plots]'; no report.png written"]


@pytest.mark.parametrize("overrides, line", [
    (["model.name=mlp", "data.name=synthetic", "data.partition=iid"],
     "error: model 'mlp' needs torch: pip install 'fedstack[torch]'"),
    (["data.name=digits"], "error: the digits data set needs scikit-learn: pip install 'fedstack[sklearn]'"),
])
def test_a_missing_extra_is_one_line_naming_its_pip_install(tmp_path, overrides, line):
    out = fedstack_without_extras("run", *[a for o in overrides for a in ("--set", o)], "--out",
                                  str(tmp_path / "run"))
    assert out.returncode == 2
    assert out.stderr.splitlines() == [line]


def test_a_deployed_numpy_client_runs_without_torch(project):
    from fedstack.transport.security import make_credentials

    creds = make_credentials(project / "certs", 1)
    server = subprocess.Popen(
        [sys.executable, "-c", WITHOUT_EXTRAS + "from fedstack.cli import main\nsys.exit(main(sys.argv[1:]))",
         "server", *NUMPY_RUN, "--set", "server.clients_per_round=1", "--clients", str(creds / "clients.toml"),
         "--listen", "127.0.0.1:0", "--insecure", "--quiet", "--out", str(project / "run")],
        cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
        assert line.startswith("listening on 127.0.0.1:"), line + server.stderr.read()
        client = fedstack_without_extras("client", "--server", line.split()[-1], "--insecure", "--token-file",
                                         str(creds / "client-1.token"), "--partition", "0", cwd=project, timeout=60)
        assert client.returncode == 0 and "2 updates accepted" in client.stdout, client.stderr
        _, err = server.communicate(timeout=30)
        assert server.returncode == 0, err
    finally:
        server.kill()
        server.wait()


def test_require_returns_the_module_or_one_line(tmp_path, monkeypatch):
    assert require("json.decoder", "torch", "x").__name__ == "json.decoder"
    with pytest.raises(MissingExtra) as missing:
        require("fedstack_no_such_package.sub", "he", "CKKS")
    assert str(missing.value) == "CKKS needs fedstack_no_such_package: pip install 'fedstack[he]'"
    assert isinstance(missing.value, ImportError)  # code that catches ImportError still does
    (tmp_path / "fedstack_broken_package.py").write_text("import fedstack_absent_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(MissingExtra) as broken:
        require("fedstack_broken_package", "privacy", "DP-SGD")
    assert str(broken.value) == ("DP-SGD needs fedstack_broken_package, which does not import (ModuleNotFoundError: "
                                 "No module named 'fedstack_absent_dependency'): pip install 'fedstack[privacy]'")


def _requirement_name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower()


def test_extras_are_declared_and_the_test_extra_installs_them_all():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    core = {_requirement_name(r) for r in project["dependencies"]}
    heavy = {"torch", "tenseal", "opacus", "dp-accounting", "ray", "matplotlib", "scikit-learn", "pandas"}
    assert not core & heavy, core & heavy
    features = set(extras) - {"all", "test", "dev", "docs"}  # docs builds the site: a tool, not a feature
    assert extras["all"] == [f"fedstack[{','.join(sorted(features, key=list(extras).index))}]"]
    # requirements.lock is the test extra (`make lock`), requirements-ray.lock the ray extra; the suite
    # builds the documentation site too (tests/test_docs_site.py)
    tested = {_requirement_name(r) for r in extras["test"]}
    for extra in features - {"ray"} | {"docs"}:
        missing = {_requirement_name(r) for r in extras[extra]} - tested
        assert not missing, f"the test extra lacks {missing} of [{extra}]"
    # every `pip install 'fedstack[...]'` the code names is an extra
    named = set()
    for file in (ROOT / "src" / "fedstack").rglob("*.py"):
        text = file.read_text()
        named |= set(re.findall(r"fedstack\[(\w+)\]", text))
        named |= set(re.findall(r"require\(\s*\"[\w.]+\",\s*\"(\w+)\"", text))
    assert named and named <= features, named - features

