"""The client halves of algorithms (fedstack.local_terms) and the refusal of a trainer that cannot apply them."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from fedstack import FitConfig, LocalTerm, TorchTrainer
from fedstack.client import EvalResult, FitResult, Trainer, capabilities
from fedstack.data import ClientData, build_dataset
from fedstack.errors import FedstackError
from fedstack.experiment import simulate
from fedstack.local_terms import ControlVariates, Proximal, terms_of
from fedstack.strategy import FedAvg, Scaffold


def squared_error(out, y, reduction="mean"):
    errors = (out.squeeze(-1) - y) ** 2
    return errors.sum() if reduction == "sum" else errors.mean()


def one_weight(a: float = 1.0):
    """w·x with one weight w = 1 and loss a·(w·x − y)²: on x = 1, y = b the gradient is 2a(w − b)."""
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    return TorchTrainer(model, loss_fn=lambda out, y, reduction="mean": a * squared_error(out, y, reduction))


def point(x: float, y: float) -> ClientData:
    return ClientData(np.array([[x]], np.float32), np.array([y], np.float32), np.array([0]), np.array([], np.int64))


def test_the_proximal_term_by_hand():
    # loss (2w)² on x = 2, y = 0: gradient 8w. lr 0.1, μ = 1, from w = 1:
    # step 1: 8·1 + 1·(1 − 1) = 8 → w = 0.2;  step 2: 8·0.2 + 1·(0.2 − 1) = 0.8 → w = 0.12
    fit = FitConfig(local_steps=2, batch_size=1, lr=0.1, mu=1.0)
    result = one_weight().fit(np.ones(1, np.float32), point(2.0, 0.0), fit)
    assert result.update == pytest.approx([0.12 - 1.0], abs=1e-6)
    plain = one_weight().fit(np.ones(1, np.float32), point(2.0, 0.0), FitConfig(local_steps=2, batch_size=1, lr=0.1))
    assert plain.update == pytest.approx([0.04 - 1.0], abs=1e-6)  # 1 − 0.8 = 0.2, then 0.2 − 0.16


def test_the_control_variates_by_hand():
    # received [x; c] = [1; 0.5], own cᵢ = 0 (first round): gradient 8w + (c − cᵢ) = 8.5 → y = 1 − 0.85 = 0.15;
    # cᵢ⁺ = cᵢ − c + (x − y)/(K·lr) = 0 − 0.5 + 0.85/0.1 = 8; sent [y − x; cᵢ⁺ − cᵢ] = [−0.85; 8], state 8
    fit = FitConfig(local_steps=1, batch_size=1, lr=0.1, scaffold=True)
    result = one_weight().fit(np.array([1.0, 0.5], np.float32), point(2.0, 0.0), fit)
    assert result.update == pytest.approx([-0.85, 8.0], abs=1e-5)
    assert result.state == pytest.approx([8.0], abs=1e-5)
    with pytest.raises(ValueError, match="scaffold expects"):
        one_weight().fit(np.ones(1, np.float32), point(2.0, 0.0), fit)


@settings(max_examples=25, deadline=None)
@given(a=st.floats(0.1, 2.0), b=st.floats(-3.0, 3.0), mu=st.floats(0.0, 2.0), steps=st.integers(1, 5))
def test_the_proximal_term_never_lets_a_client_drift_farther(a, b, mu, steps):
    # On a(w − b)², each step contracts w − w_global by 1 − lr·(2a + μ) > 0: μ makes it contract more.
    fit = FitConfig(local_steps=steps, batch_size=1, lr=0.1)
    plain = one_weight(a).fit(np.ones(1, np.float32), point(1.0, b), fit).update
    pulled = one_weight(a).fit(np.ones(1, np.float32), point(1.0, b), FitConfig(**{**vars(fit), "mu": mu})).update
    assert abs(pulled[0]) <= abs(plain[0]) + 1e-6


def test_terms_come_from_the_config_in_the_order_their_gradients_are_added():
    class Own(LocalTerm):
        pass

    own = Own()
    terms = terms_of(FitConfig(mu=0.5, scaffold=True, terms=(own,)))
    assert [type(t) for t in terms] == [Proximal, ControlVariates, Own] and terms[2] is not own  # a fresh copy
    assert FitConfig(mu=0.5, dp_sgd=True, terms=(own,)).needs() == {"proximal", "dp_sgd", "terms"}
    with pytest.raises(FedstackError, match="FitConfig.terms"):
        FitConfig(terms=[own])


class Plain:
    """A trainer of its own that knows nothing of local terms (it is not a fedstack.Trainer)."""

    def fit(self, params, data, config, state=None):
        return FitResult(np.zeros_like(params), data.num_examples)

    def evaluate(self, params, x, y):
        return EvalResult(0.0, 0, len(y))


class Declared(Plain, Trainer):
    capabilities = frozenset({"proximal"})


@pytest.mark.parametrize("strategy, missing", [(FedAvg(FitConfig(mu=0.1)), "proximal"),
                                               (Scaffold(4), "control_variates")])
def test_a_trainer_that_cannot_apply_what_the_algorithm_needs_is_refused_before_training(strategy, missing):
    data = build_dataset("digits", num_clients=4, partition="iid", alpha=0.5, seed=0)
    with pytest.raises(FedstackError, match=f"{type(strategy).__name__} needs a trainer that applies {missing}.*Plain"):
        simulate(Plain, data, np.zeros(3, np.float32), strategy=strategy, rounds=1, clients_per_round=2)
    assert capabilities(Plain()) == frozenset() and capabilities(Declared()) == {"proximal"}
    history = simulate(Declared, data, np.zeros(3, np.float32), strategy=FedAvg(FitConfig(mu=0.1)), rounds=1,
                       clients_per_round=2)
    assert history.rounds[-1]["clients"] == 2
    assert TorchTrainer.capabilities >= {"proximal", "control_variates", "dp_sgd", "terms"}
