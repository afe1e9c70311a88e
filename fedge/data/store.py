"""A ``[data] name = "store"`` section: a dataset version from fedge's object store.

The simulation reads the same data a training job reads (:mod:`fedge.central.datasets`),
by name and version, and evaluates on the same test set: the version's own test split, or,
when it has none, the same seeded hold-out a training job makes
(:func:`fedge.data.holdout.hold_out`, with the run's seed).
"""

from __future__ import annotations

import torch

from fedge.config import StoreData
from fedge.data.dataset import ArrayDataset, FederatedData
from fedge.data.holdout import hold_out

__all__ = ["load_store_data"]


def load_store_data(config: StoreData, *, seed: int = 0) -> FederatedData:
    """The version ``config`` names, as :class:`FederatedData` named ``name@version``
    (``latest`` is resolved now: the name tells which version was read).

    Float features are converted to float32, as training jobs do.
    """
    # Imported here: the store and its clients (boto3) load only when a run reads the store.
    from fedge.central.datasets import DatasetStore
    from fedge.central.storage import default_store_url, open_store

    datasets = DatasetStore(open_store(config.store or default_store_url()))
    version = datasets.get(config.dataset, config.version)
    data = datasets.load_data(version)
    if data.train.x.is_floating_point() and data.train.x.dtype != torch.float32:
        data = FederatedData(
            name=data.name,
            train=ArrayDataset(data.train.x.to(torch.float32), data.train.y),
            test=ArrayDataset(data.test.x.to(torch.float32), data.test.y),
            num_classes=data.num_classes,
        )
    if len(data.test) == 0:
        data = hold_out(data, config.test_fraction, seed)
    return data
