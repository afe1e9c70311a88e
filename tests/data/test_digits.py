"""scikit-learn digits: sizes, value range, seeded stratified split."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

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
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "sklearn" else find_spec(name, *a),
    )
    with pytest.raises(DataError, match="pip install scikit-learn"):
        load_digits()


@pytest.mark.parametrize("fraction", [0.1, 0.2, 1 / 3, 0.5, 0.9])
def test_the_split_is_scikit_learns_stratified_split(fraction: float) -> None:
    """fedge draws the split itself (importing scikit-learn costs a second per process)
    and gets train_test_split's, row for row."""
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    bunch = sklearn_digits()
    x = (bunch.images / 16).astype(np.float32)[:, None]
    for seed in (0, 1, 7):
        x_train, x_test, y_train, y_test = train_test_split(
            x, bunch.target, test_size=fraction, random_state=seed, stratify=bunch.target
        )
        data = load_digits(test_fraction=fraction, seed=seed)
        np.testing.assert_array_equal(data.train.x.numpy(), x_train)
        np.testing.assert_array_equal(data.test.x.numpy(), x_test)
        np.testing.assert_array_equal(data.train.y.numpy(), y_train)
        np.testing.assert_array_equal(data.test.y.numpy(), y_test)


def test_loading_digits_does_not_import_scikit_learn() -> None:
    code = (
        "import sys; from fedge.data.digits import load_digits; load_digits(); "
        "assert 'sklearn' not in sys.modules, 'scikit-learn was imported'"
    )
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
