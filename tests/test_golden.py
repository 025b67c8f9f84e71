"""Golden bits: the final parameters of one small run per algorithm, codec, privacy, secure-aggregation,
asynchronous, robust and decentralized path, on the local and the pool engine, against SHA-256 digests
recorded before the round loop's redesign (issue: one round loop with declared parts). A refactor that
changes any of these bits changes results; where a change is a deliberate bug fix, its commit says why
and updates the digest here.

`python tests/test_golden.py` prints the digests of the code as it is (to record them).
"""

import hashlib
import sys

import numpy as np
import pytest

from fedstack.plan import load_config
from fedstack.experiment import run_config

BASE = ["data.name=digits", "data.num_clients=6", "model.name=logreg", "server.rounds=2",
        "server.clients_per_round=4", "eval.every=0", "eval.federated=false", "seed=3"]
CONFIGS = {
    "fedavg": [],
    "fedprox": ["server.strategy=fedprox", "client.mu=0.1"],
    "scaffold": ["server.strategy=scaffold"],
    "fedadam": ["server.strategy=fedadam"],
    "qsgd_zstd": ['codec.pipeline=["qsgd", "zstd"]', "codec.bits=4"],
    "topk": ['codec.pipeline=["topk"]', "codec.topk_fraction=0.1"],
    "central_dp_adaptive": ['codec.pipeline=["clip"]', "privacy.noise_multiplier=0.5",
                            "privacy.target_quantile=0.5", "privacy.clip_norm=0.5", "privacy.clip_count_stddev=1.0"],
    "distributed_dp_secagg": ['codec.pipeline=["clip", "gaussian", "secagg"]', "privacy.mode=distributed",
                              "privacy.noise_multiplier=0.5", "privacy.clip_norm=0.5"],
    "ckks": ['codec.pipeline=["clip", "ckks"]', "privacy.clip_norm=2.0"],
    "fedbuff": ["server.strategy=fedbuff", "server.concurrency=3", "server.buffer_size=2"],
    "median_sign_flip": ["server.strategy=median", "attack.name=sign_flip", "attack.fraction=0.34"],
    "multi_krum": ["server.strategy=multi_krum", "server.clients_per_round=5"],  # f = 1 of 5
    "dpsgd_ring": ["decentralized.topology=ring"],
    "choco": ["decentralized.topology=ring", "decentralized.choco=true", 'codec.pipeline=["qsgd"]', "codec.bits=4"],
}
# CKKS decrypts with ~1e-8 noise of its own: its run is compared, within that, with the same run in plain.
APPROXIMATE = {"ckks": ['codec.pipeline=["clip"]', "privacy.clip_norm=2.0"]}
DIGESTS = {  # recorded on main at 7dfd1b0, before the redesign
    "central_dp_adaptive": "f44d1085740df0e7dd747976675fe449a7d311e7a531bf48aee7bbf678ddd1fa",
    "choco": "f5047d2d9c3988bf7488768b9971ae4be7fe96e2d00c46d42168ec6810c8dd78",
    "ckks": "bd78800c8593e55ada66f83dc0ffa36a760944952a01b09bd150819c99ee00b9",
    "distributed_dp_secagg": "043266383834112eab1de301f8fceed69765a19dd2bde71c63e51e3a642390bd",
    "dpsgd_ring": "a8bd2997780b30e739bc6687b9cf341eba30aab60c1a62ac8919d73345f83ff3",
    "fedadam": "77447987832804b558029b8b7a42648c90354ec6371b4caefd02d6e1cc5e18db",
    "fedavg": "1648abe115e7302af085b2f65a7628b4c54b75986fc17358664f42dd51347054",
    "fedbuff": "9b96e1c5045d2ceff31d7b16f0f53909640222f1d3be00aa125510e50d97f9e9",
    "fedprox": "345fe89c126137df872c4945b23abf8a82a05bf9d16cea0e1c74ff8f5d53e1c5",
    "median_sign_flip": "2fcb6dd7e527e95fbdf6218d23e9cd29d9035f2135f5c095212c1c79ee61767f",
    "multi_krum": "a2516ceb4d16287750cb8d521ff33c8645ced2fd43f1dfb0f7cd778e161aeee8",
    "qsgd_zstd": "950cc0509736aa3fd5e6f84d93244af753cd61e3137c97d5f13fb3ce472e5be5",
    "scaffold": "c9bbe4fe14d770c6e702495faab5b4d401778c88261d60741f752e5ae89d426c",
    "topk": "34a607748ede7a07e5a744f40e680dcfbc9b10fa2e888d7eb22458f4a8b9f456",
}


def final_params(name: str, engine: str, tmp_path) -> np.ndarray:
    overrides = [*BASE, *CONFIGS[name], f"engine.name={engine}", "engine.workers=2"]
    return run_config(load_config(None, overrides), tmp_path / f"{name}-{engine}").params


def digest(params: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(params, dtype=np.float32).tobytes()).hexdigest()


@pytest.mark.parametrize("engine", ["local", "pool"])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_final_parameters_keep_their_recorded_bits(name, engine, tmp_path):
    params = final_params(name, engine, tmp_path)
    if name in APPROXIMATE:
        plain = run_config(load_config(None, [*BASE, *APPROXIMATE[name], f"engine.name={engine}"]), tmp_path / "plain")
        np.testing.assert_allclose(params, plain.params, rtol=0, atol=1e-5)
        params = plain.params
    assert digest(params) == DIGESTS[name], name


if __name__ == "__main__":
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        for name in sorted(CONFIGS):
            params = final_params(name, "local", Path(tmp))
            if name in APPROXIMATE:
                params = run_config(load_config(None, [*BASE, *APPROXIMATE[name], "engine.name=local"]),
                                    Path(tmp) / "plain").params
            print(f'    "{name}": "{digest(params)}",', flush=True)
    sys.exit(0)
