"""What one client can make a GrpcEngine hold or count (unit tests; the live attacks are in test_attacks.py)."""

import tomllib

import numpy as np

from fedstack.plan import load_config
from fedstack.validation import influence
from fedstack.strategy import ClientUpdate
from fedstack.transport.server import GrpcEngine, client_view


def test_an_update_weighs_what_its_bound_allows():
    engine = GrpcEngine(["a", "b"], max_examples={"a": 100})
    assert engine.rules.weight("a", 60) == 60
    assert "over the 100" in engine.rules.weight("a", 2**62)
    assert "negative" in engine.rules.weight("a", -1)
    assert engine.rules.weight("b", 2**62) == 1  # no bound declared: every update weighs the same


def test_the_norm_screen_weighs_each_update_by_its_claimed_examples():
    unit = np.full(4, 0.5, np.float32)  # norm 1
    updates = [ClientUpdate(0, unit, 10), ClientUpdate(1, unit, 10), ClientUpdate(2, unit, 10_000)]
    np.testing.assert_allclose(influence(updates), [1.0, 1.0, 1000.0], rtol=1e-6)
    equal = [ClientUpdate(i, unit * (i + 1), 7) for i in range(3)]
    np.testing.assert_allclose(influence(equal), [1.0, 2.0, 3.0], rtol=1e-6)  # equal weights: plain norms


def test_a_device_is_sent_neither_the_seed_nor_the_servers_paths():
    config = load_config(None, ["seed=1234", 'data.path="/srv/secret/data"', 'codec.ckks_keys="/srv/keys"'])
    view = tomllib.loads(client_view(config))
    assert view["seed"] != 1234 and view["data"]["path"] == "" and view["codec"]["ckks_keys"] == ""
    assert view["seed"] == tomllib.loads(client_view(config))["seed"]  # the same for every device
    assert tomllib.loads(client_view(config, share_seed=True))["seed"] == 1234
    assert view["model"] == config.model.model_dump()  # what it needs to train is all there
