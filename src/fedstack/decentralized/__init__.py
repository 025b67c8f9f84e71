"""Decentralized (serverless) training: nodes on a graph train locally and gossip with their neighbours.

D-PSGD (Lian et al. 2017, "Can Decentralized Algorithms Outperform Centralized Algorithms?") and
CHOCO-SGD (Koloskova, Stich & Jaggi 2019, "Decentralized Stochastic Optimization and Gossip
Algorithms with Compressed Communication"). Chosen by `[decentralized] topology = ...`; reuses the
Trainer, the codecs (CHOCO-SGD's compressor) and the Engine (all nodes of a round train in parallel).
"""

from .gossip import average, choco_gossip, consensus_distance, live_weights, mix
from .run import run_decentralized
from .schedule import Gossip, GossipOptions
from .topology import (TOPOLOGIES, build_topology, complete, erdos_renyi, is_connected, metropolis_hastings, ring,
                       random_regular, spectral_gap, torus, torus_shape)

__all__ = ["average", "choco_gossip", "consensus_distance", "live_weights", "mix", "Gossip", "GossipOptions",
           "run_decentralized", "TOPOLOGIES", "build_topology", "complete", "erdos_renyi", "is_connected",
           "metropolis_hastings", "ring", "random_regular", "spectral_gap", "torus", "torus_shape"]
