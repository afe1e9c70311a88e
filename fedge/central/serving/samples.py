"""Labelled samples sent by devices become the next version of a dataset in the store.

The samples go to the dataset the served model was trained on (the name part of its
``data_version``, e.g. ``digits`` for ``digits@3``), or to a dataset named after the model
when the version records none. The dataset's newest version followed by the new samples is
stored as its next version (:meth:`~fedge.central.datasets.DatasetStore.append`: the
parent stays as it was, the arrays are one content-addressed ``.npz``); a dataset that does
not exist yet starts with them, with the model's number of classes. Concurrent uploads
never lose samples: a 201 means the samples are in that version and every later one.
"""

from __future__ import annotations

import numpy as np

from fedge.central.datasets import DatasetArrays, DatasetStore, DatasetVersion, parse_dataset_ref
from fedge.central.storage.base import ObjectStore
from fedge.errors import DataError, RequestRejected

__all__ = ["dataset_for", "store_samples"]


def dataset_for(model_name: str, data_version: str | None) -> str:
    """The dataset that samples for a model go to."""
    return parse_dataset_ref(data_version)[0] if data_version else model_name


def store_samples(
    store: ObjectStore,
    dataset: str,
    x: np.ndarray,
    y: np.ndarray,
    *,
    num_classes: int,
    source: str | None = None,
) -> DatasetVersion:
    """Append examples ``x`` (float32) with labels ``y`` to ``dataset`` as its next version.

    A dataset whose examples do not fit (another shape or dtype, fewer classes) refuses them
    with :class:`~fedge.errors.RequestRejected` (409), as the device cannot fix that.
    """
    datasets = DatasetStore(store)
    samples = DatasetArrays(x=x.astype(np.float32), y=y.astype(np.int64), num_classes=num_classes)
    try:
        return datasets.append(dataset, samples, source=source, create=True)
    except DataError as exc:
        raise RequestRejected(
            f"dataset {dataset!r} cannot take these samples: {exc}", 409
        ) from None
