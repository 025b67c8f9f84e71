"""Times one secure aggregation round: client time (per client) and server time, complete graph vs SecAgg+.

Run: .venv/bin/python tests/secagg/bench_secagg.py [n] [length] [drop_fraction] [drop_after]
(defaults 100 clients, 200_000 coordinates, 20% dropping after "masked_input": they are in U3 but do not
unmask; with "share_keys" they miss U3 and the server removes their pairwise masks). Not collected by pytest.
Serialisation is not timed; the check against the plaintext sum is.
"""

import sys
import time

import numpy as np

from fedstack.secagg import SecAggClient, SecAggParams, SecAggServer, secagg_plus_degree


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def one_round(n: int, length: int, drop_fraction: float, drop_after: str, k):
    rng = np.random.default_rng(0)
    vectors = {u: rng.uniform(-1, 1, length).astype(np.float32) for u in range(n)}
    dropped = set(rng.choice(n, int(drop_fraction * n), replace=False).tolist())
    holders = (n - 1 if k is None else k) + 1
    params = SecAggParams(threshold=holders // 2 + 1, k=k, graph_seed=1)
    server = SecAggServer(params, range(n))
    clients = {u: SecAggClient(u, params, range(n)) for u in range(n)}
    client_s = dict.fromkeys(range(n), 0.0)
    server_s = {}

    def run_clients(method, requests, *extra):
        replies = []
        for u, r in requests.items():
            reply, dt = timed(getattr(clients[u], method), *([r] if r is not None else []), *[e[u] for e in extra])
            client_s[u] += dt
            replies.append(reply)
        return replies

    adverts = run_clients("advertise_keys", dict.fromkeys(range(n)))
    requests, server_s["share_keys_requests"] = timed(server.share_keys_requests, adverts)
    replies = run_clients("share_keys", requests)
    requests, server_s["masked_input_requests"] = timed(server.masked_input_requests, replies)
    if drop_after == "share_keys":
        requests = {u: r for u, r in requests.items() if u not in dropped}
    inputs = run_clients("masked_input", requests, vectors)
    requests, server_s["unmask_requests"] = timed(server.unmask_requests, inputs)
    replies = run_clients("unmask", {u: r for u, r in requests.items() if u not in dropped})
    (total, survivors), server_s["aggregate"] = timed(server.aggregate, replies)
    expected = sum(vectors[u].astype(np.float64) for u in survivors)
    assert np.abs(total - expected).max() <= len(survivors) * 2.0 ** -(params.frac_bits + 1) + 1e-9
    per_client = np.array(list(client_s.values()))
    name = "complete" if k is None else f"SecAgg+ k={k}"
    print(f"{name:>16}: t={params.threshold}, |U3|={len(survivors)}; client mean {per_client.mean() * 1e3:.1f} ms "
          f"(max {per_client.max() * 1e3:.1f}); server {sum(server_s.values()):.2f} s = "
          + ", ".join(f"{step} {s:.2f}" for step, s in server_s.items()))


if __name__ == "__main__":
    args = sys.argv[1:] + [None] * 4
    n, length = int(args[0] or 100), int(args[1] or 200_000)
    drop, drop_after = float(args[2] or 0.2), args[3] or "masked_input"
    print(f"n={n}, length={length}, {drop:.0%} drop after {drop_after}")
    for k in (None, secagg_plus_degree(n)):
        one_round(n, length, drop, drop_after, k)
