"""Differentially private runs end to end: ε in every record, the budget stop, resume, bad settings."""

import json

import numpy as np
import pytest

from both_engines import run_on_both_engines
from crashes import Crash, crash_after
from fedstack.plan import load_config
from fedstack.errors import ConfigError
from fedstack.experiment import run_config

DP = ["data.name=digits", "model.name=logreg", "data.num_clients=40", "server.clients_per_round=8",
      "eval.federated=false", 'codec.pipeline=["clip"]', "privacy.noise_multiplier=1.0", "privacy.clip_norm=0.5",
      "client.lr=0.2"]


def test_central_dp_records_a_growing_epsilon_and_is_bit_identical_on_both_engines(tmp_path):
    local, _ = run_on_both_engines([*DP, "server.rounds=3", "server.sampler=poisson", "eval.every=0"], tmp_path)
    epsilons = [r["epsilon"] for r in local.rounds]
    assert all(0 < a < b for a, b in zip(epsilons, epsilons[1:]))
    assert all(r["clip_norm"] == 0.5 for r in local.rounds)


def test_the_budget_stops_the_run_before_it_is_exceeded_and_says_so(tmp_path):
    config = load_config(None, [*DP, "server.rounds=50", "privacy.epsilon_budget=3.0", "server.sampler=poisson"])
    history = run_config(config, tmp_path / "run")
    assert history.status == "stopped" and "epsilon_budget" in history.stopped
    assert 0 < len(history.rounds) < 50
    assert history.rounds[-1]["epsilon"] <= 3.0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "stopped" and summary["stopped"] == history.stopped


def test_a_resumed_private_run_continues_its_ledger_and_adaptive_clip_exactly(tmp_path):
    overrides = [*DP, "server.rounds=5", "engine.name=local", "privacy.target_quantile=0.5",
                 "privacy.clip_count_stddev=1.0"]
    config = load_config(None, overrides)
    whole = run_config(config, tmp_path / "whole")
    with pytest.raises(Crash):
        run_config(config, tmp_path / "resumed", on_round=[crash_after(2)])
    resumed = run_config(config, tmp_path / "resumed")
    np.testing.assert_array_equal(resumed.params, whole.params)
    assert [r["epsilon"] for r in resumed.rounds] == [r["epsilon"] for r in whole.rounds]
    clips = [r["clip_norm"] for r in whole.rounds]
    assert clips == [r["clip_norm"] for r in resumed.rounds] and len(set(clips)) > 1  # adaptive: it moved


def test_local_dp_noises_each_update_and_learns_less_than_central(tmp_path):
    central = run_config(load_config(None, [*DP, "server.rounds=6", "engine.name=local"]), tmp_path / "c")
    local = run_config(load_config(None, [*DP, "server.rounds=6", "engine.name=local", "privacy.mode=local",
                                          'codec.pipeline=["clip", "gaussian"]']), tmp_path / "l")
    # the same z on every single update instead of once on the sum: far more noise, far less accuracy
    assert local.rounds[-1]["test_accuracy"] < central.rounds[-1]["test_accuracy"]


@pytest.mark.parametrize("overrides, key", [
    (["privacy.noise_multiplier=1"], "codec.pipeline"),  # no clip
    (['codec.pipeline=["qsgd", "clip"]', "privacy.noise_multiplier=1"], "codec.pipeline"),  # clip not first
    (['codec.pipeline=["clip", "gaussian"]', "privacy.noise_multiplier=1"], "codec.pipeline"),  # central + gaussian
    (['codec.pipeline=["clip"]', "privacy.noise_multiplier=1", "privacy.mode=local"], "codec.pipeline"),
    (['codec.pipeline=["clip", "gaussian"]', "privacy.noise_multiplier=1", "privacy.mode=distributed"],
     "privacy.mode"),  # distributed without secure aggregation
    (['codec.pipeline=["clip"]', "privacy.epsilon_budget=1"], "privacy.epsilon_budget"),  # no noise
    (["privacy.epsilon_budget=1"], "privacy.epsilon_budget"),
    (['codec.pipeline=["clip", "qsgd"]', "privacy.noise_multiplier=1", "privacy.target_quantile=0.5",
      "privacy.clip_count_stddev=1"],
     "privacy.target_quantile"),
    (['codec.pipeline=["clip"]', "privacy.noise_multiplier=1", "privacy.target_quantile=0.5"],
     "privacy.clip_count_stddev"),  # 10 clients / 20 = 0.5 ≤ z/2
    (['codec.pipeline=["clip"]', "privacy.noise_multiplier=1", "server.strategy=scaffold"], "server.strategy"),
    (['codec.pipeline=["clip"]', "privacy.noise_multiplier=1", "privacy.trusted_server=false"], "privacy.mode"),
    (["privacy.delta=0"], "privacy.delta"),
    (["privacy.clip_norm=-1"], "privacy.clip_norm"),
    (['codec.download=["clip"]'], "codec.download"),
])
def test_privacy_settings_that_break_the_guarantee_are_refused_naming_the_key(overrides, key):
    with pytest.raises(ConfigError) as error:
        load_config(None, overrides)
    assert error.value.key == key


def test_dp_sgd_clients_report_their_own_epsilon_which_grows_and_survives_a_resume(tmp_path):
    overrides = ["data.name=digits", "model.name=logreg", "data.num_clients=5", "server.clients_per_round=5",
                 "server.rounds=3", "eval.federated=false", "eval.every=0", "client.dp_sgd=true",
                 "client.dp_noise_multiplier=1.0", "engine.name=local"]
    config = load_config(None, overrides)
    whole = run_config(config, tmp_path / "whole")
    spent = [r["client_epsilon_max"] for r in whole.rounds]
    assert all(0 < a < b for a, b in zip(spent, spent[1:]))  # every client trains every round here
    with pytest.raises(Crash):
        run_config(config, tmp_path / "resumed", on_round=[crash_after(2)])
    resumed = run_config(config, tmp_path / "resumed")
    assert [r["client_epsilon_max"] for r in resumed.rounds] == spent
    np.testing.assert_array_equal(resumed.params, whole.params)
    with pytest.raises(ConfigError, match="client.dp_sgd"):
        load_config(None, ["client.dp_sgd=true", "server.strategy=scaffold"])


def test_a_private_runs_report_and_summary_table_show_the_privacy_spent(tmp_path):
    from rich.console import Console

    from fedstack.report import print_summary

    run_config(load_config(None, [*DP, "server.rounds=2", "engine.name=local"]), tmp_path / "run")
    console = Console(record=True, width=200)
    print_summary(tmp_path / "run", console)
    text = console.export_text()
    assert "privacy spent" in text and "δ = 1e-05" in text
    assert (tmp_path / "run" / "report.png").stat().st_size > 0


@pytest.mark.parametrize("schedule", [["server.strategy=fedbuff", "server.concurrency=3", "server.buffer_size=2"],
                                      ["server.strategy=fedasync", "server.concurrency=3"]])
def test_dp_sgd_clients_report_their_epsilon_in_the_asynchronous_schedules_too(schedule, tmp_path):
    """The asynchronous loop accepted client.dp_sgd and recorded no client_epsilon_max."""
    config = load_config(None, ["data.name=digits", "data.num_clients=6", "model.name=logreg", "server.rounds=3",
                                "server.clients_per_round=4", "client.dp_sgd=true", "eval.federated=false",
                                *schedule])
    spent = [r["client_epsilon_max"] for r in run_config(config, tmp_path / "run").rounds]
    assert len(spent) == 3 and all(e is not None and 0 < e < float("inf") for e in spent), spent


def test_dp_sgd_is_refused_where_no_ledger_would_report_it():
    with pytest.raises(ConfigError, match="client.dp_sgd.*gossip"):
        load_config(None, ["data.name=digits", "decentralized.topology=ring", "client.dp_sgd=true"])
