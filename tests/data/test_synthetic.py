"""Synthetic(α, β): determinism, layout, and the statistics the recipe promises."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedge.data.dataset import FederatedData
from fedge.data.synthetic import generate_synthetic
from fedge.errors import ConfigError


def device_sizes(data: FederatedData) -> list[int]:
    return [
        len(a) + len(b)
        for a, b in zip(data.natural_partition, data.natural_test_partition, strict=True)
    ]


def mean_top_class_share(data: FederatedData) -> float:
    """Average over devices of the share of a device's most common training label."""
    y = data.train.y.numpy()
    return float(
        np.mean(
            [
                np.bincount(y[rows], minlength=10).max() / len(rows)
                for rows in data.natural_partition
            ]
        )
    )


def test_same_seed_same_data_other_seed_other_data() -> None:
    a = generate_synthetic(0.5, 0.5, seed=0)
    b = generate_synthetic(0.5, 0.5, seed=0)
    c = generate_synthetic(0.5, 0.5, seed=1)
    assert torch.equal(a.train.x, b.train.x)
    assert torch.equal(a.test.y, b.test.y)
    assert device_sizes(a) == device_sizes(b)
    assert device_sizes(a) != device_sizes(c)
    assert not torch.equal(a.train.x[:10], c.train.x[:10])


def test_layout_shapes_and_labels() -> None:
    data = generate_synthetic(1, 1, num_devices=12, seed=1)
    assert data.name == "synthetic_1_1"
    assert data.client_ids == [f"f_{k:05d}" for k in range(12)]
    assert data.client_ids[0] == "f_00000"
    assert data.num_classes == 10
    assert data.train.x.dtype == torch.float32
    assert data.train.y.dtype == torch.int64
    assert data.input_shape == (60,)
    assert int(data.train.y.min()) >= 0
    assert int(data.train.y.max()) <= 9
    assert int(data.test.y.max()) <= 9
    assert np.concatenate(data.natural_partition).tolist() == list(range(len(data.train)))
    assert np.concatenate(data.natural_test_partition).tolist() == list(range(len(data.test)))
    for train_rows, test_rows in zip(
        data.natural_partition, data.natural_test_partition, strict=True
    ):
        n = len(train_rows) + len(test_rows)
        assert n >= 50
        assert len(train_rows) == int(0.9 * n)


def test_dimension_and_classes_are_configurable() -> None:
    data = generate_synthetic(0, 0, num_devices=3, dimension=7, num_classes=3, seed=0)
    assert data.train.x.shape[1] == 7
    assert data.num_classes == 3
    assert int(data.train.y.max()) <= 2


def test_alpha_shifts_all_logits_equally_so_labels_do_not_change() -> None:
    low = generate_synthetic(0.0, 1.0, seed=5)
    high = generate_synthetic(5.0, 1.0, seed=5)
    assert torch.equal(low.train.x, high.train.x)
    assert torch.equal(low.train.y, high.train.y)
    assert torch.equal(low.test.y, high.test.y)
    assert high.name == "synthetic_5.0_1.0"


def test_larger_beta_skews_device_labels_more() -> None:
    seeds = range(5)
    flat = np.mean([mean_top_class_share(generate_synthetic(0, 0, seed=s)) for s in seeds])
    skewed = np.mean([mean_top_class_share(generate_synthetic(0, 3, seed=s)) for s in seeds])
    assert skewed > flat + 0.04


def test_iid_devices_share_one_label_distribution() -> None:
    def mean_distance_to_pooled(data: FederatedData) -> float:
        y = data.train.y.numpy()
        pooled = np.bincount(y, minlength=10) / len(y)
        return float(
            np.mean(
                [
                    0.5 * np.abs(np.bincount(y[rows], minlength=10) / len(rows) - pooled).sum()
                    for rows in data.natural_partition
                ]
            )
        )

    iid = generate_synthetic(0, 0, seed=0, iid=True)
    assert iid.name == "synthetic_iid"
    assert mean_distance_to_pooled(iid) < 0.2
    assert mean_distance_to_pooled(generate_synthetic(0, 0, seed=0)) > 0.5
    assert abs(float(iid.train.x.mean())) < 0.05


def test_feature_variance_follows_the_diagonal_covariance() -> None:
    data = generate_synthetic(1, 1, seed=2)
    sizes = device_sizes(data)
    k = int(np.argmax(sizes))
    assert sizes[k] > 3000
    rows = data.natural_partition[k]
    x = data.train.x[torch.as_tensor(rows)].numpy().astype(np.float64)
    variance = x.var(axis=0, ddof=1)
    expected = np.arange(1, 61) ** -1.2
    np.testing.assert_allclose(variance, expected, rtol=0.2)
    assert variance[0] > variance[9] > variance[59]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"alpha": -0.1, "beta": 0},
        {"alpha": 0, "beta": -1},
        {"alpha": float("nan"), "beta": 0},
        {"alpha": 0, "beta": 0, "num_devices": 0},
        {"alpha": 0, "beta": 0, "dimension": 0},
        {"alpha": 0, "beta": 0, "num_classes": 1},
    ],
)
def test_bad_parameters_are_config_errors(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        generate_synthetic(**kwargs)
