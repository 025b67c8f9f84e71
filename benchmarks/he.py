"""CKKS homomorphic aggregation (fedstack.he) of the 2NN's update for 10 clients: time, size, error.

    python benchmarks/he.py [--clients 10] [--repeats 3] [--coeff-mod-bits 60,40,40,60]

The update is the size of the `mlp` model (the 2NN of McMahan et al. 2017) on Fashion-MNIST shapes,
784·200 + 200 + 200·200 + 200 + 200·10 + 10 = 199,210 values, drawn uniform in [-1, 1] as float32
(the CKKS error is absolute, so the range only matters for the float32 rounding of the result).
Per repeat: every client encrypts its update, the server adds the payloads, the key holder decrypts.
Reported: medians over repeats of one client's encrypt time (itself the median over clients), the
server's add of all payloads, the key holder's decrypt, the ciphertext expansion (payload bytes over
4 bytes per value), and the max absolute error of the decrypted sum against the float64 plaintext sum,
both as returned (float32) and before that rounding (float64). Single-threaded Python; TenSEAL's own
thread pool is left at its default.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from fedstack import he
from fedstack.plan import make_trainer


def one_repeat(holder: he.KeyHolder, updates: np.ndarray) -> dict:
    public = holder.public_context()
    encrypt_s, payloads = [], []
    for u in updates:
        t = time.perf_counter()
        payloads.append(he.encrypt(public, u))
        encrypt_s.append(time.perf_counter() - t)
    t = time.perf_counter()
    total = he.add(public, payloads)
    add_s = time.perf_counter() - t
    t = time.perf_counter()
    result = holder.decrypt(total)
    decrypt_s = time.perf_counter() - t
    exact = updates.astype(np.float64).sum(axis=0)
    return {
        "encrypt_s": statistics.median(encrypt_s),
        "add_s": add_s,
        "decrypt_s": decrypt_s,
        "expansion": statistics.median(len(p) for p in payloads) / (4 * updates.shape[1]),
        "error_f32": float(np.abs(result - exact).max()),
        "error_f64": float(np.abs(holder.decrypt(total, dtype=np.float64) - exact).max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--poly-modulus-degree", type=int, default=8192)
    parser.add_argument("--coeff-mod-bits", default="60,40,40,60")
    parser.add_argument("--scale-bits", type=int, default=40)
    args = parser.parse_args()

    size = make_trainer("mlp", (1, 28, 28), 10, "sgd").spec.size
    params = he.CKKSParams(args.poly_modulus_degree, tuple(int(b) for b in args.coeff_mod_bits.split(",")),
                           args.scale_bits)
    t = time.perf_counter()
    holder = he.KeyHolder(params)
    keygen_s = time.perf_counter() - t
    chunks = -(-size // params.slots)
    print(f"CKKS: N = {params.poly_modulus_degree}, coeff_mod_bit_sizes = {params.coeff_mod_bit_sizes}, "
          f"scale = 2^{params.scale_bits}, {params.slots} slots per ciphertext")
    print(f"update: mlp on (1, 28, 28), 10 classes: {size:,} values = {chunks} ciphertexts; {args.clients} clients; "
          f"median of {args.repeats} repeats")
    print(f"keys: generated in {keygen_s * 1e3:.0f} ms; public context {len(holder.public_context()):,} bytes, "
          f"secret context {len(holder.secret_context()):,} bytes")

    rng = np.random.default_rng(0)
    runs = []
    for rep in range(args.repeats):
        updates = rng.uniform(-1, 1, (args.clients, size)).astype(np.float32)
        runs.append(one_repeat(holder, updates))
        print(f"[{rep + 1}] encrypt {runs[-1]['encrypt_s']:.3f} s/client, add {runs[-1]['add_s']:.3f} s, "
              f"decrypt {runs[-1]['decrypt_s']:.3f} s", flush=True)
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}

    rows = [
        ("encrypt, one client", f"{med['encrypt_s']:.3f} s"),
        (f"server add, {args.clients} payloads", f"{med['add_s']:.3f} s"),
        ("key holder decrypt", f"{med['decrypt_s']:.3f} s"),
        ("payload bytes / float32 bytes", f"{med['expansion']:.2f}× ({med['expansion'] * 4 * size / 1e6:.1f} MB)"),
        ("max |error| of the sum, float32", f"{med['error_f32']:.2e}"),
        ("max |error| of the sum, float64", f"{med['error_f64']:.2e}"),
    ]
    width = max(len(name) for name, _ in rows)
    print()
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()
