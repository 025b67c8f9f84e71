"""A trained model out of its run directory: `fedstack export` (pt, safetensors, ONNX checked by ONNX Runtime),
`fedstack predict`, `History.model()` and `History.to_pandas()`."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from fedstack.errors import FedstackError
from fedstack.experiment import run_config
from fedstack.export import export, load_run, predict, trained_module
from fedstack.plan import load_config

SMALL = ["data.name=digits", "data.num_clients=6", "server.clients_per_round=3", "server.rounds=2",
         "eval.federated=false", "model.name=mlp"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "run"
    history = run_config(load_config(None, SMALL), out)
    return out, history


def flat(state: dict) -> np.ndarray:
    return np.concatenate([t.detach().numpy().ravel() for name, t in state.items()
                           if t.is_floating_point()]).astype(np.float32)


def test_pt_and_safetensors_hold_the_final_parameters(run, tmp_path):
    from safetensors.torch import load_file

    out, history = run
    export(out, "pt", tmp_path / "model.pt")
    export(out, "safetensors", tmp_path / "model.safetensors")
    state = torch.load(tmp_path / "model.pt")
    assert np.array_equal(flat(state), history.params)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    assert sorted(tensors) == sorted(state) and all(torch.equal(tensors[k], state[k]) for k in state)


def test_onnx_runtime_reproduces_the_model_and_predict_agrees(run, tmp_path):
    import onnxruntime

    out, history = run
    done = export(out, "onnx", tmp_path / "model.onnx")
    assert done.max_abs_difference <= 1e-4
    config, params, dataset = load_run(out)
    x = dataset.x_test[100:130]  # not the inputs the export was checked on
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"))
    (logits,) = session.run(None, {"input": x})
    with torch.inference_mode():
        reference = history.model()(torch.from_numpy(x)).numpy()
    assert np.abs(logits - reference).max() < 1e-4
    np.savez(tmp_path / "inputs.npz", x=x)
    assert np.array_equal(predict(out, tmp_path / "inputs.npz"), reference.argmax(1))
    assert np.array_equal(trained_module(config, params, dataset)(torch.from_numpy(x)).detach().numpy(), reference)


def test_history_to_pandas_has_a_row_per_round_and_dotted_columns(run):
    frame = run[1].to_pandas()
    assert list(frame["round"]) == [1, 2] and "failures_by_kind.dropout" in frame.columns


def test_bad_requests_are_one_line_naming_what_is_wrong(run, tmp_path):
    out, _ = run
    with pytest.raises(FedstackError, match="--format zip"):
        export(out, "zip", tmp_path / "m")
    with pytest.raises(FedstackError, match="config.toml not found"):
        export(tmp_path, "pt", tmp_path / "m")
    np.savez(tmp_path / "wrong.npz", x=np.zeros((2, 3), np.float32))
    with pytest.raises(FedstackError, match="inputs of shape"):
        predict(out, tmp_path / "wrong.npz")
    proc = subprocess.run([sys.executable, "-m", "fedstack.cli", "predict", str(out), str(tmp_path / "none.npz")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1


def test_your_own_regression_model_from_toml_exports_to_onnx(tmp_path):
    (tmp_path / "reg.py").write_text(textwrap.dedent("""
        import numpy as np, torch

        def make_model():
            return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Tanh(),
                                       torch.nn.Linear(8, 1))

        def load():
            rng = np.random.default_rng(1)
            x = rng.normal(size=(400, 4)).astype(np.float32)
            y = (x.sum(1) ** 2 / 4).astype(np.float32)
            return x[:300], y[:300], x[300:], y[300:]
    """))
    sets = ['model.name="reg:make_model"', 'data.name="reg:load"', 'model.task="regression"', 'data.partition="iid"',
            "data.num_clients=4", "server.clients_per_round=2", "server.rounds=2", "eval.federated=false"]
    cli = [sys.executable, "-m", "fedstack.cli"]
    args = [a for s in sets for a in ("--set", s)]
    assert subprocess.run([*cli, "run", *args, "--out", "run", "--quiet"], cwd=tmp_path, capture_output=True,
                          text=True).returncode == 0
    np.savez(tmp_path / "x.npz", x=np.ones((3, 4), np.float32))
    # export and predict each read the run: side by side
    exporting, predicting = (subprocess.Popen([*cli, *command], cwd=tmp_path, stdout=subprocess.PIPE,
                                              stderr=subprocess.PIPE, text=True)
                             for command in (["export", "run", "--format", "onnx", "--out", "model.onnx"],
                                             ["predict", "run", "x.npz"]))
    try:
        exported, predicted = exporting.communicate(timeout=300), predicting.communicate(timeout=300)
    finally:
        exporting.kill()
        predicting.kill()
    assert exporting.returncode == 0 and "ONNX Runtime reproduces" in exported[0], exported[1]
    assert predicting.returncode == 0 and len(predicted[0].split()) == 3  # one value per input row
