"""fedstack: federated learning that simulates on one machine and deploys for real."""

from .version import __version__

from .client import EvalResult, FitConfig, FitResult, Trainer, TorchTrainer  # noqa: E402
from .codec import Pipeline  # noqa: E402
from .data import ClientData, FederatedDataset  # noqa: E402
from .experiment import History, simulate  # noqa: E402
from .engine import make_engine  # noqa: E402
from .local_terms import LocalTerm  # noqa: E402
from .loop import Callback, Evaluation, Parts, Rules  # noqa: E402
from .strategy import FedAvg, Strategy, Task  # noqa: E402

__all__ = ["__version__", "EvalResult", "FitConfig", "FitResult", "Trainer", "TorchTrainer", "Pipeline",
           "ClientData", "FederatedDataset", "History", "simulate", "FedAvg", "Strategy", "Task", "make_engine",
           "Callback", "Evaluation", "Parts", "Rules", "LocalTerm"]
