"""Synthetic(α, β): the heterogeneous logistic-regression data of FedProx.

Li et al., "Federated Optimization in Heterogeneous Networks" (MLSys 2020,
arXiv:1812.06127), following Shamir et al. (2014). Device ``k`` draws

- its size ``n_k = int(lognormal(4, 2)) + 50``;
- ``u_k ~ N(0, α)`` and ``B_k ~ N(0, β)``;
- ``W_k ~ N(u_k, 1)`` of shape ``(dimension, num_classes)``, ``b_k ~ N(u_k, 1)``;
- ``v_k ~ N(B_k, 1)`` of length ``dimension``;
- ``x ~ N(v_k, Σ)`` with diagonal ``Σ_jj = (j + 1)^-1.2``;
- ``y = argmax softmax(x W_k + b_k)``.

As in the reference code (``data/synthetic_*/generate_synthetic.py``), the second
argument of ``N(·, ·)`` is a standard deviation. The IID variant shares one
``W, b ~ N(0, 1)`` and uses ``v_k = 0``.

Note that ``u_k`` shifts every class logit of device ``k`` by the same amount, so it
cannot change an argmax: in this recipe α leaves ``x`` and ``y`` unchanged (for a fixed
seed they are identical across α). Label and feature skew between devices come from
β and from each device's own ``W_k, b_k``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from fedge.data.dataset import ArrayDataset, FederatedData
from fedge.errors import ConfigError

__all__ = ["generate_synthetic"]

_TRAIN_FRACTION = 0.9


def _check(alpha: float, beta: float, num_devices: int, dimension: int, num_classes: int) -> None:
    for label, value in (("alpha", alpha), ("beta", beta)):
        if not math.isfinite(value) or value < 0:
            raise ConfigError(f"{label} must be a finite number >= 0, got {value}")
    for label, count, least in (
        ("num_devices", num_devices, 1),
        ("dimension", dimension, 1),
        ("num_classes", num_classes, 2),
    ):
        if int(count) != count or count < least:
            raise ConfigError(f"{label} must be an integer >= {least}, got {count}")


def generate_synthetic(
    alpha: float,
    beta: float,
    *,
    num_devices: int = 30,
    seed: int = 0,
    iid: bool = False,
    dimension: int = 60,
    num_classes: int = 10,
) -> FederatedData:
    """Generate Synthetic(α, β), one natural client per device.

    Parameters
    ----------
    alpha:
        Standard deviation of each device's model mean ``u_k`` (≥ 0).
    beta:
        Standard deviation of each device's feature-mean centre ``B_k`` (≥ 0).
    num_devices:
        Number of devices (default 30, as in FedProx).
    seed:
        Seed of :func:`numpy.random.default_rng`; the same seed gives the same data.
    iid:
        One shared model and zero feature means for every device (default ``False``);
        ``alpha`` and ``beta`` are then unused.
    dimension:
        Number of features (default 60).
    num_classes:
        Number of classes (default 10).

    Returns
    -------
    FederatedData
        ``name`` ``"synthetic_{alpha}_{beta}"`` (``"synthetic_iid"`` when ``iid``);
        float32 ``x`` of shape ``(N, dimension)``; clients ``"f_00000"``, ... whose
        first ``int(0.9 n_k)`` rows are training rows and the rest test rows.

    Raises
    ------
    ConfigError
        If α or β is negative or not finite, ``num_devices`` or ``dimension`` < 1, or
        ``num_classes`` < 2.
    """
    _check(alpha, beta, num_devices, dimension, num_classes)
    rng = np.random.default_rng(seed)
    sizes = rng.lognormal(4, 2, num_devices).astype(np.int64) + 50
    std_x = np.arange(1, dimension + 1, dtype=np.float64) ** -0.6
    if iid:
        shared_w = rng.normal(0, 1, (dimension, num_classes))
        shared_b = rng.normal(0, 1, num_classes)
        mean_x = np.zeros((num_devices, dimension))
    else:
        mean_w = rng.normal(0, alpha, num_devices)
        centre = rng.normal(0, beta, num_devices)
        mean_x = np.stack([rng.normal(centre[k], 1, dimension) for k in range(num_devices)])

    train_x, train_y, test_x, test_y = [], [], [], []
    for k in range(num_devices):
        if iid:
            w, b = shared_w, shared_b
        else:
            w = rng.normal(mean_w[k], 1, (dimension, num_classes))
            b = rng.normal(mean_w[k], 1, num_classes)
        # Σ is diagonal, so x = v_k + z·sqrt(Σ_jj) samples N(v_k, Σ) exactly.
        x = mean_x[k] + rng.standard_normal((int(sizes[k]), dimension)) * std_x
        # softmax is monotone: its argmax is the argmax of the logits.
        y = np.argmax(x @ w + b, axis=1)
        cut = int(_TRAIN_FRACTION * sizes[k])
        # float32 per device, not at the end: the float64 draws of all devices (and their
        # concatenation) would otherwise be held at once, 4x the final size.
        train_x.append(x[:cut].astype(np.float32))
        train_y.append(y[:cut])
        test_x.append(x[cut:].astype(np.float32))
        test_y.append(y[cut:])

    def partition(parts: list[np.ndarray]) -> list[np.ndarray]:
        ends = np.cumsum([len(p) for p in parts])
        return [
            np.arange(end - len(p), end, dtype=np.int64) for p, end in zip(parts, ends, strict=True)
        ]

    def dataset(xs: list[np.ndarray], ys: list[np.ndarray]) -> ArrayDataset:
        x = torch.from_numpy(np.concatenate(xs))
        return ArrayDataset(x, torch.from_numpy(np.concatenate(ys).astype(np.int64)))

    return FederatedData(
        name="synthetic_iid" if iid else f"synthetic_{alpha}_{beta}",
        train=dataset(train_x, train_y),
        test=dataset(test_x, test_y),
        num_classes=num_classes,
        natural_partition=partition(train_y),
        client_ids=[f"f_{k:05d}" for k in range(num_devices)],
        natural_test_partition=partition(test_y),
    )
