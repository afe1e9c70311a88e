"""scikit-learn digits: sizes, value range, seeded stratified split."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from fedge.data.digits import load_digits
from fedge.errors import ConfigError, DataError


def test_sizes_shapes_and_range() -> None:
    data = load_digits()
    assert data.name == "digits"
    assert data.num_classes == 10
    assert data.natural_partition is None
    assert len(data.train) + len(data.test) == 1797
    assert len(data.test) == 360
    assert data.input_shape == (1, 8, 8)
    assert data.train.x.dtype == torch.float32
    assert data.train.y.dtype == torch.int64
    assert float(data.train.x.min()) == 0.0
    assert float(data.train.x.max()) == 1.0
    pixel_counts = torch.cat([data.train.x, data.test.x]) * 16
    assert torch.equal(pixel_counts, pixel_counts.round())


def test_split_keeps_every_image_once() -> None:
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    data = load_digits(test_fraction=0.3, seed=1)
    labels = torch.cat([data.train.y, data.test.y]).numpy()
    assert np.bincount(labels).tolist() == np.bincount(bunch.target).tolist()
    ours = torch.cat([data.train.x, data.test.x]).reshape(1797, 64).numpy() * 16
    np.testing.assert_array_equal(
        np.sort(ours.sum(axis=1)), np.sort(bunch.images.reshape(1797, 64).sum(axis=1))
    )


def test_split_is_stratified() -> None:
    data = load_digits(test_fraction=0.25, seed=0)
    total = np.bincount(torch.cat([data.train.y, data.test.y]).numpy())
    test = np.bincount(data.test.y.numpy(), minlength=10)
    assert np.all(np.abs(test - 0.25 * total) <= 1)


def test_split_is_deterministic_by_seed() -> None:
    a, b, c = load_digits(seed=7), load_digits(seed=7), load_digits(seed=8)
    assert torch.equal(a.train.x, b.train.x)
    assert torch.equal(a.test.y, b.test.y)
    assert not torch.equal(a.test.y, c.test.y)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.2, 0.001])
def test_bad_test_fraction_is_a_config_error(fraction: float) -> None:
    with pytest.raises(ConfigError, match="test_fraction"):
        load_digits(test_fraction=fraction)


def test_missing_scikit_learn_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(DataError, match="pip install scikit-learn"):
        load_digits()
