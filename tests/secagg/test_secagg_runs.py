"""Secure aggregation inside simulated rounds: the same model as the plain sum, dropouts, aborts, DP."""

import numpy as np
import pytest

from both_engines import run_on_both_engines
from fedstack.plan import load_config
from fedstack.errors import ConfigError
from fedstack.experiment import run_config

BASE = ["data.name=digits", "model.name=logreg", "data.num_clients=20", "server.clients_per_round=8",
        "server.rounds=3", "eval.federated=false", "eval.every=0", "privacy.clip_norm=2.0", "engine.name=local"]


def _run(tmp_path, name, overrides):
    return run_config(load_config(None, [*BASE, *overrides]), tmp_path / name)


def test_a_secure_run_ends_where_the_plain_sum_does_even_with_dropouts(tmp_path):
    for dropout in ("0.0", "0.2"):
        plain = _run(tmp_path, f"plain{dropout}", ['codec.pipeline=["clip"]', f"systems.dropout={dropout}"])
        secure = _run(tmp_path, f"secure{dropout}", ['codec.pipeline=["clip", "secagg"]', f"systems.dropout={dropout}"])
        # the fixed-point error is at most 2^-17 per client and coordinate per round
        np.testing.assert_allclose(secure.params, plain.params, atol=1e-3)
        assert [r["clients"] for r in secure.rounds] == [r["clients"] for r in plain.rounds]
        # bytes: keys, shares, masked vectors and unmasking cost more than the plain float32 updates
        assert all(s["bytes_up"] > p["bytes_up"] for s, p in zip(secure.rounds, plain.rounds))
    assert sum(r["failures_by_kind"]["dropout"] for r in secure.rounds) > 0


def test_secagg_plus_and_both_engines_agree_bit_for_bit(tmp_path):
    local, _ = run_on_both_engines([*BASE[:-1], 'codec.pipeline=["clip", "secagg"]', "codec.secagg_plus=true",
                                    "systems.dropout=0.2", "data.num_clients=40", "server.clients_per_round=30"],
                                   tmp_path)
    assert all(r["clients"] > 0 for r in local.rounds)


def test_too_many_dropouts_abort_the_round_and_the_global_model_is_kept(tmp_path, caplog):
    history = _run(tmp_path, "abort", ['codec.pipeline=["clip", "secagg"]', "codec.secagg_threshold=1.0",
                                       "systems.dropout=0.5", "server.round_retries=0"])
    assert "secure aggregation aborted" in caplog.text
    aborted = [r for r in history.rounds if r["clients"] == 0]
    assert aborted  # with every share holder needed, one dropout aborts the round: nothing is aggregated
    assert all(r["secure_aborts"] == 1 for r in aborted)  # counted in the round's record


def test_distributed_dp_under_secure_aggregation_accounts_epsilon(tmp_path):
    history = _run(tmp_path, "ddp", ['codec.pipeline=["clip", "gaussian", "secagg"]', "privacy.mode=distributed",
                                     "privacy.noise_multiplier=1.0"])
    epsilons = [r["epsilon"] for r in history.rounds]
    assert all(0 < a < b for a, b in zip(epsilons, epsilons[1:]))


@pytest.mark.parametrize("pipeline", ['["clip", "secagg", "zstd"]', '["secagg"]', '["qsgd", "clip", "secagg"]'])
def test_pipelines_that_would_break_secure_aggregation_are_refused(pipeline):
    with pytest.raises(ConfigError) as error:
        load_config(None, [f"codec.pipeline={pipeline}"])
    assert error.value.key == "codec.pipeline"


def test_secure_aggregation_needs_individual_updates_for_scaffold_and_a_sane_threshold():
    with pytest.raises(ConfigError, match="server.strategy"):
        load_config(None, ['codec.pipeline=["clip", "secagg"]', "server.strategy=scaffold"])
    with pytest.raises(ConfigError, match="codec.secagg_threshold"):
        load_config(None, ['codec.pipeline=["clip", "secagg"]', "codec.secagg_threshold=0.5"])


@pytest.mark.parametrize("overrides, key", [(["server.strategy=fedbuff"], "server.strategy"),
                                            (['codec.pipeline=["clip", "secagg"]'], None),
                                            (['codec.pipeline=["clip", "ckks"]'], None)])
def test_what_only_simulation_offers_is_refused_for_a_deployed_server(overrides, key, tmp_path):
    from fedstack.engine import LocalEngine

    config = load_config(None, [*BASE, "server.rounds=1", *overrides])
    if key is None:  # secagg and ckks run deployed too (tests/transport/test_secagg_deploy.py, test_ckks_deploy.py)
        assert run_config(config, tmp_path / "run", engine=LocalEngine()).rounds[0]["clients"] == 8
        return
    with pytest.raises(ConfigError) as error:  # an Engine object stands for the deployment's remote clients
        run_config(config, tmp_path / "run", engine=LocalEngine())
    assert error.value.key == key
