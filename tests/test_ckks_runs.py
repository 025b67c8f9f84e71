"""Homomorphic aggregation (codec stage ckks) in simulated rounds, and the `fedstack keys` step."""

import numpy as np
import pytest

from fedstack.cli import main
from fedstack.plan import load_config
from fedstack.errors import ConfigError
from fedstack.experiment import run_config

BASE = ["data.name=digits", "model.name=logreg", "data.num_clients=12", "server.clients_per_round=4",
        "server.rounds=2", "eval.federated=false", "eval.every=0", "privacy.clip_norm=2.0", "engine.name=local"]


def test_an_encrypted_run_ends_where_the_plain_sum_does_using_keys_from_fedstack_keys(tmp_path, capsys):
    assert main(["keys", str(tmp_path / "keys")]) == 0
    assert "ckks_secret.bin" in capsys.readouterr().out
    assert main(["keys", str(tmp_path / "keys")]) == 2  # never overwrites a secret key by accident
    plain = run_config(load_config(None, [*BASE, 'codec.pipeline=["clip"]']), tmp_path / "plain")
    encrypted = run_config(load_config(None, [*BASE, 'codec.pipeline=["clip", "ckks"]',
                                              f"codec.ckks_keys={str(tmp_path / 'keys')!r}"]), tmp_path / "he")
    np.testing.assert_allclose(encrypted.params, plain.params, atol=1e-5)  # CKKS: ~1e-8 per value
    # ciphertexts weigh far more than float32: the price of the server never reading an update
    assert all(e["bytes_up"] > 5 * p["bytes_up"] for e, p in zip(encrypted.rounds, plain.rounds))


def test_missing_key_files_and_double_summing_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="fedstack keys"):
        load_config(None, ['codec.pipeline=["clip", "ckks"]', f"codec.ckks_keys={str(tmp_path)!r}"])
    with pytest.raises(ConfigError) as error:
        load_config(None, ['codec.pipeline=["clip", "secagg", "ckks"]'])
    assert error.value.key == "codec.pipeline"
