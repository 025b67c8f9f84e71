"""A trained model out of its run directory: `fedstack export` and `fedstack predict`, `History.model()`.

The run directory holds the config (`config.toml`) and the final parameters (`store.sqlite`, the last
checkpoint); the model is rebuilt from the config — a built-in one, or the user's own
(`model.name = "package.module:make_model"`, importable from the working directory) — and loaded with them.

Formats: `pt` (a PyTorch `state_dict`, `torch.save`), `safetensors` (the `safetensors` library: tensors
only, no pickled code), `onnx` (`torch.onnx`, then checked: ONNX Runtime must reproduce the model's
outputs on the run's first test inputs within `ONNX_TOLERANCE`). The export libraries are the `export`
extra (`pip install 'fedstack[export]'`), imported only here.
"""

from __future__ import annotations

import tomllib
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import FedstackError

FORMATS = ("pt", "safetensors", "onnx")
ONNX_TOLERANCE = 1e-4  # the largest |ONNX Runtime − PyTorch| allowed on the check inputs (float32 rounding)
CHECK_EXAMPLES = 64


@dataclass
class Exported:
    """What `export` wrote, and for ONNX how closely ONNX Runtime reproduced PyTorch's outputs."""

    path: Path
    format: str
    parameters: int
    max_abs_difference: float | None = None


def _require(module: str):
    from .extras import require

    return require(module, "export", "fedstack export")


def load_run(run_dir: str | Path):
    """(the Config of a finished run, its final parameters, its data set) — one line naming what is missing."""
    from .config import validate
    from .plan import dataset_of
    from .store import RunStore

    run_dir = Path(run_dir)
    config_file, store_file = run_dir / "config.toml", run_dir / "store.sqlite"
    for path in (config_file, store_file):
        if not path.is_file():
            raise FedstackError(f"{path} not found: is {run_dir} a run directory of `fedstack run`?")
    config = validate(tomllib.loads(config_file.read_text()))
    store = RunStore(store_file)
    try:
        checkpoint = store.checkpoint()
    finally:
        store.close()
    if checkpoint is None:
        raise FedstackError(f"{store_file} holds no finished round: nothing to export")
    return config, checkpoint[1], dataset_of(config)


def trained_module(config, params: np.ndarray, dataset):
    """The config's model (a torch.nn.Module) with `params` loaded, in evaluation mode."""
    from .client import TorchTrainer
    from .plan import trainer_factory

    trainer = trainer_factory(config, tuple(dataset.x.shape[1:]), dataset.num_classes)()
    if not isinstance(trainer, TorchTrainer):
        raise FedstackError(f"model.name: {config.model.name} trains with {type(trainer).__name__}, not a torch "
                            "module: export its parameters with its own tools")
    trainer.set_params(np.asarray(params, dtype=np.float32))
    return trainer.model.eval()


def export(run_dir: str | Path, fmt: str, out: str | Path) -> Exported:
    """Write the run's final model to `out` as `fmt` (FORMATS)."""
    if fmt not in FORMATS:
        raise FedstackError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
    config, params, dataset = load_run(run_dir)
    module = trained_module(config, params, dataset)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().contiguous() for name, tensor in module.state_dict().items()}
    if fmt == "pt":
        import torch

        torch.save(state, out)
        return Exported(out, fmt, int(params.size))
    if fmt == "safetensors":
        _require("safetensors")
        from safetensors.torch import save_file

        save_file(state, str(out))
        return Exported(out, fmt, int(params.size))
    return Exported(out, fmt, int(params.size), _export_onnx(module, check_inputs(dataset), out))


def check_inputs(dataset) -> np.ndarray:
    """Inputs to check an export on: the run's first test examples, or its first training examples when it
    has no central test set (evaluation was federated)."""
    return (dataset.x_test if len(dataset.x_test) else dataset.x)[:CHECK_EXAMPLES]


def _export_onnx(module, inputs: np.ndarray, out: Path) -> float:
    """torch.onnx's export (batch size left free), checked against ONNX Runtime on `inputs`: the largest
    absolute difference of their outputs; a FedstackError above ONNX_TOLERANCE."""
    import torch

    _require("onnx")
    ort = _require("onnxruntime")
    example = torch.from_numpy(np.ascontiguousarray(inputs))
    with warnings.catch_warnings():  # the TorchScript-based exporter: no onnxscript needed, LSTMs included
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), str(out), input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}}, dynamo=False)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(["output"], {"input": example.numpy()})
    with torch.inference_mode():
        torch_out = module(example).numpy()
    difference = float(np.abs(onnx_out - torch_out).max())
    if not difference <= ONNX_TOLERANCE:
        raise FedstackError(f"ONNX Runtime's outputs differ from PyTorch's by {difference:.3g} (> {ONNX_TOLERANCE}); "
                            f"{out} is not a faithful export")
    return difference


def predict(run_dir: str | Path, inputs_file: str | Path) -> np.ndarray:
    """The run's final model on the inputs of an .npz file (its array `x`, or its only array), given as the
    model sees them (a built-in data set's standardisation applied): class predictions for a classifier,
    the outputs for a regression."""
    from .extras import require

    torch = require("torch", "torch", "fedstack predict")
    config, params, dataset = load_run(run_dir)
    path = Path(inputs_file)
    try:
        with np.load(path) as arrays:
            names = list(arrays.files)
            x = arrays["x"] if "x" in names else arrays[names[0]] if len(names) == 1 else None
    except (OSError, ValueError) as exc:
        raise FedstackError(f"{path}: not a readable .npz file ({exc})") from None
    if x is None:
        raise FedstackError(f"{path}: holds {names}; name the inputs 'x'")
    if tuple(x.shape[1:]) != tuple(dataset.x.shape[1:]):
        raise FedstackError(f"{path}: inputs of shape {tuple(x.shape[1:])}, the model takes "
                            f"{tuple(dataset.x.shape[1:])}")
    module = trained_module(config, params, dataset)
    with torch.inference_mode():
        out = module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()
    return out if config.model.task == "regression" else out.argmax(axis=-1)
