"""One secure aggregation inside a simulated round: the devices' side of the protocol beside the server's."""

from __future__ import annotations

import numpy as np

from .protocol import SecAggClient, SecAggParams, SecAggServer


class SecureRound:
    """SecAgg between the server object and the simulated devices of `cohort`, one round.

    Each device is a `SecAggClient` holding that client's secrets; the server object receives only
    protocol messages, and every message crosses as bytes (`to_bytes` → `from_bytes`), counted in
    `bytes_up` / `bytes_down` as they would be on a wire. Creating it runs rounds 0 and 1 (keys and
    shares) with the whole cohort; `submit` is round 2 for one client whose training finished (its
    device masks its vector); `finish` runs round 3 and returns (float64 sum of the submitted
    vectors, the clients it sums). A client of the cohort that never submits has dropped out after
    sharing its keys: its masks are removed through the survivors' shares. SecAggAbort (from the
    protocol) when too few clients remain: nothing is output.
    """

    def __init__(self, params: SecAggParams, cohort):
        cohort = sorted(cohort)
        self.server = SecAggServer(params, cohort)
        self.devices = {u: SecAggClient(u, params, cohort) for u in cohort}
        self.bytes_up = self.bytes_down = 0
        requests = self.server.share_keys_requests([self._up(self.devices[u].advertise_keys()) for u in cohort])
        shares = [self._up(self.devices[u].share_keys(self._down(r))) for u, r in requests.items()]
        self._requests = self.server.masked_input_requests(shares)  # U2: who may submit
        self._masked = []

    def submit(self, client_id: int, vector: np.ndarray) -> bool:
        """Round 2 for one client: its device masks `vector` and sends it. False if it is not in U2."""
        request = self._requests.get(client_id)
        if request is None:
            return False
        self._masked.append(self._up(self.devices[client_id].masked_input(self._down(request), vector)))
        return True

    def finish(self) -> tuple[np.ndarray, tuple[int, ...]]:
        """Round 3: unmask; (the float64 sum of the submitted vectors, the ids it sums)."""
        requests = self.server.unmask_requests(self._masked)
        return self.server.aggregate([self._up(self.devices[u].unmask(self._down(r))) for u, r in requests.items()])

    def _up(self, message):
        data = message.to_bytes()
        self.bytes_up += len(data)
        return type(message).from_bytes(data)

    def _down(self, message):
        data = message.to_bytes()
        self.bytes_down += len(data)
        return type(message).from_bytes(data)
