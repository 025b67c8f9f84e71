"""The round loop and its schedules: synchronous rounds, asynchronous events, gossip (see `loop.core`)."""

from .aggregate import Aggregator, Collection, Gather, SecureSum, StreamingSum
from .contribute import ContributionOptions
from .core import SERVER_ID, Callback, RoundLoop
from .events import Asynchronous
from .filters import UpdateFilters
from ..options import Evaluation, Parts, Rules
from .record import FAILURE_KINDS, REJECT_REASONS, RoundRecord, Tally, mean_fit_metrics, mean_train_loss
from .sync import Synchronous

__all__ = ["Aggregator", "Asynchronous", "Callback", "Collection", "ContributionOptions", "Evaluation", "FAILURE_KINDS",
           "Gather", "Parts",
           "REJECT_REASONS", "RoundLoop", "RoundRecord", "Rules", "SERVER_ID", "SecureSum", "StreamingSum",
           "Synchronous", "Tally", "UpdateFilters", "mean_fit_metrics", "mean_train_loss", "schedule_for"]


def schedule_for(strategy) -> type[RoundLoop]:
    """The schedule that runs `strategy`: asynchronous events for an `asynchronous` strategy, else rounds."""
    return Asynchronous if strategy.asynchronous else Synchronous
