"""Server algorithms: how clients are configured and how their updates are aggregated."""

from .base import (ClientUpdate, Strategy, Task, WeightedSum, broadcast, needs_client_state, restore_strategy_state,
                   strategy_state)
from .asynchronous import FedAsync, FedBuff, staleness_weight
from .fedavg import FedAvg
from .fedopt import ADAPTIVE, FedOpt
from .robust import RULES, Robust, RootUpdate
from .personal import Personalized
from .scaffold import Scaffold

PERSONALIZED = ("ditto", "apfl", "fedper", "fedrep", "fedbn", "local_only")
CLUSTERED = ("ifca", "cfl")
STRATEGIES = ("fedavg", "fedprox", "scaffold", "fedavgm", *ADAPTIVE, "fedbuff", "fedasync", *RULES, *PERSONALIZED,
              *CLUSTERED)


def build_strategy(server, fit, num_clients: int, root=None, personal=None, groups=None, clustering=None,
                   model_size: int = 0) -> Strategy:
    """The strategy named by the `server` config section, giving clients the local work `fit`.

    FedProx (Li et al. 2020, "Federated Optimization in Heterogeneous Networks") is FedAvg whose
    clients add the proximal term `client.mu`; the server side is the same weighted average.
    A robust rule (`server.strategy` = "median", ..., or `server.aggregator` in front of another
    strategy) is `Robust` around that server step; FLTrust's needs the server's `root` update. A personalised
    algorithm (`PERSONALIZED`) is `Personalized` around its client half `personal`
    (fedstack.plan.personalization_of builds it); a clustered one (`CLUSTERED`) its own server half, which
    compares the clusters it finds with the data's planted `groups` where known (`clustering`: the config's
    [personal] section; `model_size`: how many parameters one model has).
    """
    if server.strategy == "cfl":
        from ..clustered import CflServer

        return CflServer(num_clients, model_size, fit, eps1=clustering.cfl_eps1, eps2=clustering.cfl_eps2,
                         warmup=clustering.cfl_warmup, server_lr=server.server_lr, truth=groups)
    if server.strategy == "ifca":
        from ..clustered import IfcaServer

        return IfcaServer(personal, num_clients, fit, server_lr=server.server_lr, truth=groups,
                          revive=clustering.ifca_revive if clustering is not None else 0)
    if server.strategy in PERSONALIZED:
        return Personalized(personal, fit, server_lr=server.server_lr)
    rule = server.strategy if server.strategy in RULES else server.aggregator
    if rule:
        inner = build_strategy(server.model_copy(update={"strategy": "fedavg" if server.strategy in RULES
                                                         else server.strategy, "aggregator": ""}), fit, num_clients)
        return Robust(inner, rule, capacity=server.clients_per_round, byzantine=server.byzantine,
                      krum_m=server.krum_m, trim_beta=server.trim_beta, norm_bound=server.norm_bound,
                      clip_tau=server.clip_tau, clip_iters=server.clip_iters, root=root)
    if server.strategy in ("fedavg", "fedprox"):
        return FedAvg(fit, server_lr=server.server_lr)
    if server.strategy == "fedbuff":
        return FedBuff(fit, server_lr=server.server_lr, staleness_exponent=server.staleness_exponent)
    if server.strategy == "fedasync":
        return FedAsync(fit, alpha=server.alpha, staleness_exponent=server.staleness_exponent)
    if server.strategy == "scaffold":
        return Scaffold(num_clients, fit, server_lr=server.server_lr)
    return FedOpt(server.strategy, fit, server_lr=server.server_lr, momentum=server.momentum,
                  beta1=server.beta1, beta2=server.beta2, tau=server.tau)

__all__ = ["ClientUpdate", "Strategy", "Task", "WeightedSum", "FedAvg", "FedOpt", "FedBuff", "FedAsync",
           "staleness_weight", "Scaffold", "STRATEGIES", "Robust", "RootUpdate", "RULES",
           "build_strategy", "Personalized", "PERSONALIZED", "CLUSTERED", "strategy_state", "restore_strategy_state",
           "broadcast", "needs_client_state"]
