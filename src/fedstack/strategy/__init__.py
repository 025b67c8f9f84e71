"""Server algorithms: how clients are configured and how their updates are aggregated."""

from .base import ClientUpdate, Strategy, Task, WeightedSum, restore_strategy_state, strategy_state
from .fedavg import FedAvg

STRATEGIES = {"fedavg": FedAvg}

__all__ = ["ClientUpdate", "Strategy", "Task", "WeightedSum", "FedAvg", "STRATEGIES", "strategy_state",
           "restore_strategy_state"]
