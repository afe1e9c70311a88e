"""scikit-learn's handwritten digits: 1,797 8×8 images, tiny real data for fast runs."""

from __future__ import annotations

import gzip
import importlib.util
import math
from pathlib import Path

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
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be in (0, 1), got {test_fraction}")
    pixels, labels = _read_digits()
    images = (pixels / _MAX_PIXEL).astype(np.float32).reshape(-1, 1, 8, 8)
    train, test = stratified_split(labels, test_fraction, seed)
    x_train, x_test, y_train, y_test = images[train], images[test], labels[train], labels[test]
    return FederatedData(
        name="digits",
        train=ArrayDataset(torch.from_numpy(x_train), torch.from_numpy(y_train)),
        test=ArrayDataset(torch.from_numpy(x_test), torch.from_numpy(y_test)),
        num_classes=_NUM_CLASSES,
    )


def _read_digits() -> tuple[np.ndarray, np.ndarray]:
    """Pixel counts ``(1797, 64)`` and labels of the file scikit-learn ships, read without
    importing scikit-learn (about a second of start-up in every process that loads the
    digits: a federation server and each of its client processes)."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the digits dataset ships with scikit-learn: `pip install scikit-learn`")
    folder = Path(next(iter(spec.submodule_search_locations)))
    path = folder / "datasets" / "data" / "digits.csv.gz"
    if not path.is_file():  # another layout: scikit-learn's own loader reads it
        from sklearn.datasets import load_digits as sklearn_digits

        bunch = sklearn_digits()
        return bunch.data, bunch.target.astype(np.int64)
    with gzip.open(path, "rt") as f:
        data = np.loadtxt(f, delimiter=",")
    return data[:, :-1], data[:, -1].astype(np.int64)


def stratified_split(
    labels: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Train and test row indices, stratified by label: the split of scikit-learn's
    ``train_test_split(..., test_size=test_fraction, random_state=seed, stratify=labels)``
    (its ``StratifiedShuffleSplit``), draw for draw, so that digits keep the split they
    had when scikit-learn made it (``tests/data/test_digits.py`` compares the two).

    Raises :class:`ConfigError` when a set would get fewer rows than there are classes.
    """
    n = len(labels)
    n_test = math.ceil(test_fraction * n)
    n_train = n - n_test
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    if counts.min() < 2 or min(n_train, n_test) < len(classes):
        raise ConfigError(
            f"cannot split digits with test_fraction={test_fraction}: each of the "
            f"{len(classes)} classes needs a row in both sets"
        )
    by_class = np.split(np.argsort(inverse, kind="stable"), np.cumsum(counts)[:-1])
    rng = np.random.RandomState(seed)
    n_i = _approximate_mode(counts, n_train, rng)
    t_i = _approximate_mode(counts - n_i, n_test, rng)
    train: list[int] = []
    test: list[int] = []
    for rows, a, b in zip(by_class, n_i, t_i, strict=True):
        shuffled = rows.take(rng.permutation(len(rows)), mode="clip")
        train.extend(shuffled[:a])
        test.extend(shuffled[a : a + b])
    return rng.permutation(train), rng.permutation(test)


def _approximate_mode(counts: np.ndarray, draws: int, rng: np.random.RandomState) -> np.ndarray:
    """Rows per class of ``draws`` rows drawn in proportion to ``counts``: the floor of each
    share, then one more for the classes with the largest remainders (ties broken by
    ``rng``), as scikit-learn's ``_approximate_mode``."""
    continuous = counts / counts.sum() * draws
    floored = np.floor(continuous)
    need = int(draws - floored.sum())
    remainder = continuous - floored
    for value in np.sort(np.unique(remainder))[::-1]:
        if need <= 0:
            break
        (tied,) = np.where(remainder == value)
        now = min(len(tied), need)
        floored[rng.choice(tied, size=now, replace=False)] += 1
        need -= now
    return floored.astype(int)
