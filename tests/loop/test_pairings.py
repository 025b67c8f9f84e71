"""Every schedule × feature pairing: the plan either accepts it and the feature acts (its figures in the
round record), or refuses it before any work naming the key at fault — never accepted and silently dropped."""

import numpy as np
import pytest

from fedstack.errors import ConfigError
from fedstack.experiment import run_config
from fedstack.plan import load_config

BASE = ["data.name=digits", "data.num_clients=6", "server.clients_per_round=3", "model.name=logreg",
        "server.rounds=2", "engine.name=local", "eval.federated=false", "eval.every=0", "data.holdout=0.2"]
SCHEDULES = {"sync": ["server.strategy=fedavg"], "async": ["server.strategy=fedbuff", "server.concurrency=3"],
             "gossip": ["decentralized.topology=ring"]}
CENTRAL = ["privacy.mode=central", "privacy.noise_multiplier=0.5", 'codec.pipeline=["clip"]']


def epsilon(rounds):
    return rounds[-1]["epsilon"] > 0


def smaller(key):
    return lambda rounds: sum(r[key] for r in rounds) < sum(r[f"{key}_raw"] for r in rounds)


def differs(rounds, params, plain):
    return not np.array_equal(params, plain)


# feature: (overrides, evidence it acted — from the records, or (records, params, plain params) —,
#           {schedule: the key a refusal names})
FEATURES = {
    "dp_sgd": (["client.dp_sgd=true"], lambda rounds: rounds[-1]["client_epsilon_max"] > 0,
               {"gossip": "client.dp_sgd"}),
    "central_dp": (CENTRAL, epsilon, {"async": "server.strategy", "gossip": "privacy.noise_multiplier"}),
    "local_dp": (["privacy.mode=local", "privacy.noise_multiplier=0.5", 'codec.pipeline=["clip","gaussian"]'],
                 epsilon, {"async": "server.strategy", "gossip": "privacy.noise_multiplier"}),
    "epsilon_budget": ([*CENTRAL, "privacy.epsilon_budget=1e-3"], lambda rounds: rounds == [],
                       {"async": "server.strategy", "gossip": "privacy.noise_multiplier"}),
    "secagg": (['codec.pipeline=["clip","secagg"]'],
               lambda rounds: all(r["secure_aborts"] == 0 and r["clients"] == 3 for r in rounds),
               {"async": "server.strategy", "gossip": "privacy.noise_multiplier"}),
    "qsgd": (['codec.pipeline=["qsgd"]'], smaller("bytes_up"), {"gossip": "codec.pipeline"}),
    "topk_error_feedback": (['codec.pipeline=["topk"]'], smaller("bytes_up"), {"gossip": "codec.pipeline"}),
    "download_codec": (['codec.download=["fp16"]'], smaller("bytes_down"), {"gossip": "codec.download"}),
    "robust_rule": (["server.aggregator=median"], lambda rounds: "aggregate_s" in rounds[-1],
                    {"async": "server.aggregator", "gossip": "server.aggregator"}),
    "attack": (["attack.name=sign_flip", "attack.fraction=0.34"], differs, {"gossip": "attack.name"}),
    "norm_bound": (["server.max_norm_ratio=1"], lambda rounds: sum(r["rejected_by_reason"]["norm"] for r in rounds),
                   {"gossip": "server.max_norm_ratio"}),
    "oort_sampler": (["server.sampler=oort"], differs, {"gossip": "server.sampler"}),
    "device_fleet": (["systems.profile=heterogeneous", "systems.dropout=0.3"],
                     lambda rounds: rounds[-1]["sim_time_s"] > 0, {"gossip": "systems.profile"}),
    "deadline_partial_work": (["systems.profile=heterogeneous", "server.deadline_s=0.5", "client.partial_work=true"],
                              lambda rounds: sum(r["partial"] for r in rounds) > 0, {"gossip": "systems.profile"}),
    "overselect": (["server.overselect=0.5"], lambda rounds: rounds[-1]["sampled"] == 5,
                   {"async": "server.overselect", "gossip": "server.overselect"}),
    "fedprox": (["client.mu=1.0"], differs, {}),
    "personalised_eval": (["eval.federated=true", "eval.finetune_steps=2"],
                          lambda rounds: rounds[-1]["personalized"]["clients"] > 0, {}),
}

_plain: dict = {}


def _run(overrides, tmp_path):
    history = run_config(load_config(None, [*BASE, *overrides]), tmp_path)
    return history.rounds, history.params


@pytest.mark.parametrize("feature", FEATURES)
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_a_pairing_is_honoured_or_refused_naming_the_key(schedule, feature, tmp_path):
    overrides, acted, refused = FEATURES[feature]
    if schedule in refused:
        with pytest.raises(ConfigError) as err:
            run_config(load_config(None, [*BASE, *SCHEDULES[schedule], *overrides]), tmp_path)
        assert err.value.key == refused[schedule]
        return
    rounds, params = _run([*SCHEDULES[schedule], *overrides], tmp_path / "feature")
    if acted.__code__.co_argcount == 3:  # evidence against the same schedule without the feature
        if schedule not in _plain:
            _plain[schedule] = _run(SCHEDULES[schedule], tmp_path / "plain")[1]
        assert acted(rounds, params, _plain[schedule])
    else:
        assert acted(rounds)
