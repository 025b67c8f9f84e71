"""fedstack: federated learning that simulates on one machine and deploys for real.

Every part a README example names is here: `simulate` and its typed options (`Parts`, `Rules`,
`Evaluation`); server algorithms (`FedAvg`, `FedOpt`, `Scaffold`, `FedBuff`, `FedAsync`, `Robust`); client
algorithms (`LocalTerm`, `Proximal`, `ControlVariates`); transforms (`Codec`, `Pipeline`, `Transform`,
`CentralDP`); aggregators (`StreamingSum`, `Gather`, `SecureSum`); `Trainer`, `TorchTrainer`; `Callback`.
"""

from .version import __version__

from .client import EvalResult, FitConfig, FitResult, Trainer, TorchTrainer  # noqa: E402
from .codec import Codec, Pipeline  # noqa: E402
from .data import ClientData, FederatedDataset  # noqa: E402
from .dp.central import AdaptiveClipping, CentralDP  # noqa: E402
from .experiment import History, simulate  # noqa: E402
from .engine import Engine, make_engine  # noqa: E402
from .local_terms import ControlVariates, LocalTerm, Proximal  # noqa: E402
from .loop import Aggregator, Callback, Evaluation, Gather, Parts, Rules, SecureSum, StreamingSum  # noqa: E402
from .sampling import Sampler  # noqa: E402
from .strategy import FedAsync, FedAvg, FedBuff, FedOpt, Robust, Scaffold, Strategy, Task  # noqa: E402
from .transform import Transform  # noqa: E402

__all__ = ["__version__", "simulate", "History", "Parts", "Rules", "Evaluation", "make_engine", "Engine",
           "Strategy", "Task", "FedAvg", "FedOpt", "Scaffold", "FedBuff", "FedAsync", "Robust",
           "LocalTerm", "Proximal", "ControlVariates", "Codec", "Pipeline", "Transform", "CentralDP",
           "AdaptiveClipping", "Aggregator", "StreamingSum", "Gather", "SecureSum", "Sampler", "Callback",
           "Trainer", "TorchTrainer", "FitConfig", "FitResult", "EvalResult", "ClientData", "FederatedDataset"]
