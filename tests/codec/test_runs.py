"""Codecs in whole runs: real byte counts, error-feedback residuals kept as client state, bad payloads refused."""

import json

import numpy as np
import pytest

from fedstack.codec import CodecContext, build_pipeline
from fedstack.plan import load_config
from fedstack.engine import FitReply, Outcome
from fedstack.experiment import run_config
from fedstack.store import RunStore

from crashes import Crash, crash_after

RUN = ["data.name=digits", "data.num_clients=6", "model.name=logreg", "server.rounds=4",
       "server.clients_per_round=3", "eval.federated=false", "client.lr=0.1"]
PARAMS = 8 * 8 * 10 + 10  # logreg on 8×8 digits


def test_topk_with_error_feedback_learns_keeps_residuals_and_counts_real_bytes(tmp_path):
    sets = [*RUN, 'codec.pipeline=["topk"]', "codec.topk_fraction=0.05"]
    local = run_config(load_config(None, [*sets, "engine.name=local"]), tmp_path / "local")
    pool = run_config(load_config(None, [*sets, "engine.name=pool", "engine.workers=2"]), tmp_path / "pool")
    assert np.array_equal(local.params, pool.params)
    k = int(np.ceil(0.05 * PARAMS))
    for record in local.rounds:  # header + k values + k one-byte gaps (or the bitmap), per client
        assert 3 * (11 + 4 * k) < record["bytes_up"] <= 3 * (11 + 4 * k + (PARAMS + 7) // 8)
        assert record["bytes_up_raw"] == 3 * 4 * PARAMS
    summary = json.loads((tmp_path / "local" / "summary.json").read_text())
    assert summary["final"]["compression_up"] > 10
    store = RunStore(tmp_path / "local" / "store.sqlite")
    residuals = [store.get(cid) for cid in range(6) if store.get(cid) is not None]
    assert residuals and all(set(r) == {"codec0.topk"} and np.abs(r["codec0.topk"]).sum() > 0 for r in residuals)
    store.close()
    assert local.rounds[-1]["test_accuracy"] > local.rounds[0]["test_accuracy"]

    config = load_config(None, [*sets, "engine.name=local"])
    with pytest.raises(Crash):
        run_config(config, tmp_path / "broken", on_round=[crash_after(2)])
    assert np.array_equal(run_config(config, tmp_path / "broken").params, local.params)


def test_a_compressed_download_counts_its_own_bytes(tmp_path):
    history = run_config(load_config(None, [*RUN, "engine.name=local", 'codec.download=["fp16"]']), tmp_path / "r")
    assert all(r["bytes_down"] == 3 * (6 + 2 * PARAMS) for r in history.rounds)
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["final"]["compression_down"] == pytest.approx(4 * PARAMS / (6 + 2 * PARAMS))
    assert summary["final"]["compression_up"] == 1.0


def test_a_payload_that_does_not_decode_is_refused_and_counted(tmp_path, caplog):
    from fedstack.engine import LocalEngine

    class Tampering(LocalEngine):
        """Flips a byte in client 0's payload header: the server must reject, count and go on."""

        def run(self, params, tasks):
            for outcome in super().run(params, tasks):
                if outcome.value is not None and getattr(outcome.task, "client_id", None) == 0:
                    bad = bytearray(outcome.value.payload)
                    bad[0] ^= 0xFF
                    outcome = Outcome(outcome.task, FitReply(bytes(bad), outcome.value.num_examples))
                yield outcome

    from fedstack.data import build_dataset
    from fedstack.experiment import simulate
    from fedstack.loop import Evaluation, Parts
    from fedstack.plan import initial_params, make_trainer
    import functools

    data = build_dataset("digits", num_clients=3, partition="iid", alpha=0.5, seed=0)
    factory = functools.partial(make_trainer, "logreg", (1, 8, 8), 10, "sgd")
    history = simulate(factory, data, initial_params(factory, 0), rounds=2, clients_per_round=3, engine=Tampering(),
                       parts=Parts(pipeline=build_pipeline(["qsgd"])), evaluation=Evaluation(federated=False))
    assert [r["failures"] for r in history.rounds] == [1, 1] and [r["clients"] for r in history.rounds] == [2, 2]
    assert "rejected update from client 0" in caplog.text


def test_bad_codec_config_fails_before_training():
    from fedstack.errors import ConfigError

    for sets, key in [(['codec.pipeline=["qsgd"]', "codec.bits=3"], "codec.bits"),
                      (['codec.pipeline=["topk"]', "codec.topk_fraction=0"], "codec.topk_fraction"),
                      (['codec.pipeline=["sign", "fp16"]'], "codec.pipeline"),
                      (['codec.download=["topk"]'], "codec.download"),
                      (['codec.pipeline=["gzip"]'], "codec.pipeline")]:
        with pytest.raises(ConfigError, match=key):
            load_config(None, sets)


def test_server_context_seeds_the_download_codec():
    from fedstack.loop import SERVER_ID

    ctx = CodecContext(1, SERVER_ID, 0)
    qsgd = build_pipeline(["qsgd"])
    v = np.random.default_rng(0).normal(size=100).astype(np.float32)
    assert qsgd.encode(v, ctx) == qsgd.encode(v, ctx)
