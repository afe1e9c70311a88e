"""scikit-learn's handwritten digits: 1,797 8×8 images, tiny real data for fast runs."""

from __future__ import annotations

import numpy as np
import torch

from fedge.data.dataset import ArrayDataset, FederatedData
from fedge.errors import ConfigError, DataError

__all__ = ["load_digits"]

_NUM_CLASSES = 10
_MAX_PIXEL = 16.0


def load_digits(*, test_fraction: float = 0.2, seed: int = 0) -> FederatedData:
    """Load the digits bundled with scikit-learn, split train/test by class.

    Parameters
    ----------
    test_fraction:
        Share of images in the test set, in (0, 1) (default 0.2). The split is
        stratified, so each class keeps its share in both sets.
    seed:
        Seed of the split (default 0); the same seed gives the same split.

    Returns
    -------
    FederatedData
        ``name="digits"``, float32 ``x`` of shape ``(N, 1, 8, 8)`` in [0, 1] (pixel
        counts 0..16 divided by 16), 10 classes, no natural partition.

    Raises
    ------
    ConfigError
        If ``test_fraction`` leaves a set with fewer images than classes.
    DataError
        If scikit-learn is not installed.
    """
    try:
        from sklearn.datasets import load_digits as sklearn_digits
        from sklearn.model_selection import train_test_split
    except ImportError as exc:
        raise DataError(
            "the digits dataset ships with scikit-learn: `pip install scikit-learn`"
        ) from exc
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be in (0, 1), got {test_fraction}")
    bunch = sklearn_digits()
    images = (bunch.images / _MAX_PIXEL).astype(np.float32)[:, None, :, :]
    labels = bunch.target.astype(np.int64)
    try:
        x_train, x_test, y_train, y_test = train_test_split(
            images, labels, test_size=test_fraction, random_state=seed, stratify=labels
        )
    except ValueError as exc:
        raise ConfigError(f"cannot split digits with test_fraction={test_fraction}: {exc}") from exc
    return FederatedData(
        name="digits",
        train=ArrayDataset(torch.from_numpy(x_train), torch.from_numpy(y_train)),
        test=ArrayDataset(torch.from_numpy(x_test), torch.from_numpy(y_test)),
        num_classes=_NUM_CLASSES,
    )
