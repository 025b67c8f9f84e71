"""What a client's reply to its task may be: how many bytes, what weight, which metrics, a decodable update.

Pure rules over one reply, apart from the engine that hands out tasks and holds the lock: a deployed server
asks them before it reads a payload (`limit`) and, outside its lock, before it books one (`fit_reply`).
"""

from __future__ import annotations

import math

from ..client import EvalResult
from ..codec import CodecContext, Pipeline
from ..engine import FitReply, Workload
from ..errors import brief
from ..validation import check_update

# Masked inputs, ciphertexts and protocol messages: at most this many bytes a model value, plus the base
# (a CKKS ciphertext takes ~83 bytes a value plus ~330 KB).
PROTECTED_BYTES_PER_VALUE, PROTECTED_BYTES_BASE = 128, 2 << 20
MAX_METRICS = 64  # training figures a client may attach to an update


SUM = "sum:"  # the prefix of a task's own metric sums among an evaluation's figures


def eval_figures(result: EvalResult) -> dict[str, float]:
    """An evaluation's figures as an UpdateHeader's metrics (the example count travels as num_examples);
    `ReplyRules.eval_reply` reads them back. A figure a task lacks (accuracy in a regression) is absent."""
    figures = {"loss_sum": float(result.loss_sum)}
    if result.correct is not None:
        figures["correct"] = float(result.correct)
    if result.correct_top3 is not None:
        figures["correct_top3"] = float(result.correct_top3)
    figures.update({SUM + name: float(value) for name, value in result.sums.items()})
    return figures


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

    def eval_reply(self, name: str, header) -> EvalResult | tuple[str, str]:
        """The EvalResult a held-out evaluation's reply claims, or (kind, reason) of its refusal. The figures
        are the client's word: bounded (examples by `max_examples`, counts by examples), never trusted
        further — they are reported, and no model depends on them."""
        examples, figures = int(header.num_examples), dict(header.metrics)
        bound = self.max_examples.get(name, 0)
        if examples < 0 or (bound and examples > bound):
            return "weight", f"num_examples {examples} is out of bounds for this client (0..{bound or 'any'})"
        if len(figures) > MAX_METRICS or "loss_sum" not in figures:
            return "malformed", f"an evaluation needs loss_sum and at most {MAX_METRICS} figures"
        if not all(math.isfinite(v) for v in figures.values()):
            return "malformed", "an evaluation's figures must be finite"
        counts = [figures.get(k) for k in ("correct", "correct_top3")]
        if any(c is not None and not (0 <= c <= examples and c == int(c)) for c in counts):
            return "malformed", f"correct predictions must be whole numbers in 0..{examples}"
        sums = {k[len(SUM):]: v for k, v in figures.items() if k.startswith(SUM)}
        correct, top3 = (None if c is None else int(c) for c in counts)
        return EvalResult(figures["loss_sum"], correct, examples, top3, sums)
