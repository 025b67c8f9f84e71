"""Data layer: dataset sources, partitioners, and the federated dataset of index partitions."""

from fedstack.data.csr import Partition
from fedstack.data.build import build_dataset
from fedstack.data.clusters import plant_clusters
from fedstack.data.dataset import ClientData, FederatedDataset
from fedstack.data.partition import dirichlet, iid, powerlaw, powerlaw_shared, shards, split_holdout
from fedstack.data.sources import (
    FASHION_MNIST_FILES,
    FASHION_MNIST_URL,
    download_fashion_mnist,
    fashion_mnist_search_paths,
    find_fashion_mnist,
    load_digits,
    load_fashion_mnist,
    read_idx,
)

__all__ = [
    "ClientData",
    "FederatedDataset",
    "build_dataset",
    "Partition",
    "iid",
    "dirichlet",
    "shards",
    "powerlaw",
    "powerlaw_shared",
    "split_holdout",
    "plant_clusters",
    "FASHION_MNIST_FILES",
    "FASHION_MNIST_URL",
    "read_idx",
    "fashion_mnist_search_paths",
    "find_fashion_mnist",
    "load_fashion_mnist",
    "download_fashion_mnist",
    "load_digits",
]
