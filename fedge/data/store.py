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
from fedge.data.holdout import held_out_rows, hold_out

__all__ = ["load_store_data"]


def load_store_data(config: StoreData, *, seed: int = 0, boxes: bool = False) -> FederatedData:
    """The version ``config`` names, as :class:`FederatedData` named ``name@version``
    (``latest`` is resolved now: the name tells which version was read).

    Float features are converted to float32, as training jobs do. A version of images and
    boxes loads only when the caller takes ``boxes`` (the simulation), as
    :class:`~fedge.data.detection.DetectionDataset` splits; else it is a
    :class:`~fedge.errors.DataError`.
    """
    # Imported here: the store and its clients (boto3) load only when a run reads the store.
    from fedge.central.datasets import DatasetStore
    from fedge.central.storage import default_store_url, open_store

    datasets = DatasetStore(open_store(config.store or default_store_url()))
    version = datasets.get(config.dataset, config.version)
    if boxes and version.task == "detection":
        train, test = datasets.load(version).to_detection()
        if test is None or len(test) == 0:
            rows, held = held_out_rows(len(train), config.test_fraction, seed, version.ref)
            train, test = train.subset(rows), train.subset(held)
        return FederatedData(version.ref, train, test, num_classes=train.num_classes)
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
