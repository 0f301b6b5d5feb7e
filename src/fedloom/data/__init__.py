"""Datasets and how they are split over clients.

Load a named dataset split over clients with :func:`load_dataset`, wrap arrays you already
hold with :func:`from_arrays`, or define a population of any size by a function of the client
index with :meth:`FederatedDataset.from_function` (each client is made when it is sampled);
split labels yourself with :func:`partition_indices`. The
file loaders (:func:`load_mnist_idx`, :func:`load_heart_disease`, :func:`load_leaf`) take
paths and never download anything.

Examples
--------
>>> from fedloom.data import load_dataset
>>> ds = load_dataset("digits", num_clients=20, partition="shards:2", seed=0)
>>> client = ds.client(0)
>>> client.train.x.shape[1], ds.input_shape, ds.num_classes
(64, (1, 8, 8), 10)
"""

from __future__ import annotations

from fedloom.data._builtin import synthetic
from fedloom.data._files import (
    FILL_MISSING,
    label_names,
    load_client_data,
    load_heart_disease,
    load_leaf,
    load_mnist_idx,
)
from fedloom.data._load import DATASETS, from_arrays, load_dataset
from fedloom.data._partition import PARTITIONS, partition_indices
from fedloom.data._types import ArrayData, ClientData, FederatedDataset

__all__ = [
    "DATASETS",
    "FILL_MISSING",
    "PARTITIONS",
    "ArrayData",
    "ClientData",
    "FederatedDataset",
    "from_arrays",
    "label_names",
    "load_client_data",
    "load_dataset",
    "load_heart_disease",
    "load_leaf",
    "load_mnist_idx",
    "partition_indices",
    "synthetic",
]
