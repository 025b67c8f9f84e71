"""The optional parts of fedstack and the one line that says how to install a missing one.

`pip install fedstack` installs the core: the config, the round loop, the codecs, secure aggregation,
the gRPC server and client, and any model written as a `fedstack.Trainer` (NumPy, your own code).
Everything heavier is an extra, imported only where it is used, through `require`:

| extra     | brings                          | for                                                        |
| --------- | ------------------------------- | ---------------------------------------------------------- |
| torch     | torch                           | the built-in models, `TorchTrainer`, your own torch module |
| privacy   | dp-accounting, opacus           | ε accounting (`[privacy]`), DP-SGD (`client.dp_sgd`)       |
| he        | tenseal                         | CKKS homomorphic aggregation (codec `ckks`)                |
| ray       | ray                             | `engine.name = "ray"`                                      |
| sklearn   | scikit-learn                    | the `digits` data set, `fedstack.adapters.sklearn`         |
| plots     | matplotlib                      | report.png (`fedstack report`, the end of a run)           |
| export    | safetensors, onnx, onnxruntime  | `fedstack export --format safetensors / onnx`              |
| analysis  | pandas                          | `History.to_pandas()`                                      |
| tracking  | tensorboard, mlflow-skinny, ... | `[tracking]`: TensorBoard event files, MLflow runs         |
| monitor   | prometheus-client               | `fedstack server --metrics-port`: Prometheus metrics       |
| all       | every extra above               |                                                            |
"""

from __future__ import annotations

import importlib
import importlib.util

from .errors import FedstackError, brief

# The name pip knows a module's package by, where it differs from the module's.
PACKAGES = {"sklearn": "scikit-learn", "dp_accounting": "dp-accounting", "mlflow": "mlflow-skinny",
            "prometheus_client": "prometheus-client"}


class MissingExtra(FedstackError, ImportError):
    """An optional package a feature needs is not installed (or does not import): one line naming the
    `pip install` that fixes it. The CLI prints it and exits with code 2, as for any FedstackError; it is an
    ImportError too, for code that catches those."""


def require(module: str, extra: str, feature: str):
    """`module` imported (a submodule too: "matplotlib.pyplot"), or MissingExtra: "<feature> needs
    <package>: pip install 'fedstack[<extra>]'"."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        root = module.partition(".")[0]
        if isinstance(exc, ModuleNotFoundError) and (exc.name or "").partition(".")[0] == root:
            raise _missing(root, extra, feature) from None
        # Installed, but it (or a package it needs) fails to import: say why, and what reinstalls it.
        raise _missing(root, extra, feature, f", which does not import ({brief(exc, 120)})") from exc


def require_installed(module: str, extra: str, feature: str) -> None:
    """MissingExtra, as `require` says it, unless `module`'s package is installed — without importing it (a
    feature that imports it later, off the critical path, checks before any work that it will find it)."""
    root = module.partition(".")[0]
    if importlib.util.find_spec(root) is None:
        raise _missing(root, extra, feature)


def _missing(root: str, extra: str, feature: str, why: str = "") -> MissingExtra:
    return MissingExtra(f"{feature} needs {PACKAGES.get(root, root)}{why}: pip install 'fedstack[{extra}]'")
