"""What a client's reply to its task may be: how many bytes, what weight, which metrics, a decodable update.

Pure rules over one reply, apart from the engine that hands out tasks and holds the lock: a deployed server
asks them before it reads a payload (`limit`) and, outside its lock, before it books one (`fit_reply`).
"""

from __future__ import annotations

import math

from ..codec import CodecContext, Pipeline
from ..engine import FitReply, Workload
from ..errors import brief
from ..validation import check_update

# Masked inputs, ciphertexts and protocol messages: at most this many bytes a model value, plus the base
# (a CKKS ciphertext takes ~83 bytes a value plus ~330 KB).
PROTECTED_BYTES_PER_VALUE, PROTECTED_BYTES_BASE = 128, 2 << 20
MAX_METRICS = 64  # training figures a client may attach to an update


class ReplyRules:
    """The rules for replies to a deployment's tasks; `max_examples` bounds each client's claimed example
    count by name (a missing or 0 bound: every update weighs 1, since a claim cannot be checked)."""

    def __init__(self, max_examples: dict[str, int] | None = None):
        self.max_examples = dict(max_examples or {})

    @staticmethod
    def limit(size: int, pipeline: Pipeline | None) -> int:
        """The most bytes a reply may announce for a model of `size` values: an encoded update within what
        its `pipeline` can emit; a protected one (no pipeline: masked input, ciphertext, protocol message)
        within a bound that grows with the model."""
        if pipeline is None:
            return PROTECTED_BYTES_PER_VALUE * size + PROTECTED_BYTES_BASE
        return pipeline.max_payload_bytes(size)

    def weight(self, name: str, claimed: int) -> int | str:
        """The weight an update counts with, or why its claimed example count is refused."""
        bound = self.max_examples.get(name, 0)
        if claimed < 0:
            return f"negative num_examples {claimed}"
        if not bound:  # nothing bounds the claim: every deployed update weighs the same
            return 1
        if claimed > bound:
            return f"num_examples {claimed} is over the {bound} this client may claim"
        return claimed

    def fit_reply(self, name: str, task, header, payload: bytes, size: int,
                  workload: Workload) -> FitReply | tuple[str, str]:
        """The FitReply a fit task's reply books — its update decoded once, which the round loop reuses —
        or (kind, reason) of its refusal."""
        weight = self.weight(name, int(header.num_examples))
        if isinstance(weight, str):
            return "weight", weight
        if len(header.metrics) > MAX_METRICS:
            return "malformed", f"at most {MAX_METRICS} metrics may come with an update"
        # NaN is "no value" (DP-SGD sends no training loss); an infinity would poison a mean: also NaN
        metrics = {k: v if math.isfinite(v) else math.nan for k, v in header.metrics.items()}
        update = None
        if task.protocol is None:  # a masked vector or ciphertext is no update the server could decode
            try:
                ctx = CodecContext(task.round, task.client_id, workload.seed)
                update = workload.pipeline.decode(payload, ctx, size)
            except Exception as exc:  # garbage from the network must not reach the aggregate
                return "malformed", f"undecodable payload ({brief(exc)})"
            problem = check_update(update, size, 0)
            if problem:
                return "malformed", f"malformed update: {problem}"
        return FitReply(payload, weight, metrics, update=update)
