"""Turn the ``[data]`` and ``[partition]`` sections of an experiment into client datasets."""

from __future__ import annotations

import numpy as np

from fedge.config import (
    DataConfig,
    DigitsData,
    FashionMNISTData,
    LeafData,
    NaturalPartition,
    PartitionConfig,
    SyntheticData,
)
from fedge.data import partition as P
from fedge.data.dataset import FederatedData
from fedge.errors import ConfigError

__all__ = ["load_data", "partition_data"]


def load_data(config: DataConfig, *, seed: int = 0) -> FederatedData:
    """Load (or generate) the dataset a ``[data]`` section describes."""
    if isinstance(config, FashionMNISTData):
        from fedge.data.fashion_mnist import load_fashion_mnist

        return load_fashion_mnist(config.data_dir, download=config.download)
    if isinstance(config, LeafData):
        from fedge.data.leaf import load_leaf

        return load_leaf(config.path, input_shape=config.input_shape)
    if isinstance(config, SyntheticData):
        from fedge.data.synthetic import generate_synthetic

        return generate_synthetic(
            config.alpha, config.beta, num_devices=config.num_devices, seed=seed, iid=config.iid
        )
    if isinstance(config, DigitsData):
        from fedge.data.digits import load_digits

        return load_digits(test_fraction=config.test_fraction, seed=seed)
    raise ConfigError(f"unknown dataset {config!r}")


def partition_data(
    data: FederatedData, config: PartitionConfig | None, *, seed: int = 0
) -> list[np.ndarray]:
    """Split ``data.train`` among clients as ``config`` says.

    With no ``[partition]`` section, data that comes split by user (LEAF, Synthetic) keeps
    its natural partition; other data needs one. The split is drawn with the section's
    ``seed`` when it has one, else with ``seed``.
    """
    if config is None or isinstance(config, NaturalPartition):
        if data.natural_partition is None:
            raise ConfigError(
                f"dataset {data.name} has no natural partition: add a [partition] section "
                "(scheme = iid, dirichlet, label_k, shards or quantity_skew)"
            )
        return P.natural(data.natural_partition)
    labels = data.train.y.numpy()
    options = config.model_dump(exclude={"scheme", "num_clients", "seed"})
    if config.seed is not None:
        seed = config.seed
    if config.scheme in ("dirichlet", "label_k"):
        options["num_classes"] = data.num_classes
    return P.PARTITIONERS[config.scheme](labels, config.num_clients, seed=seed, **options)
