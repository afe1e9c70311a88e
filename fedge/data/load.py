"""Turn the ``[data]`` and ``[partition]`` sections of an experiment into client datasets."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from fedge.config import (
    DETECTION_DATA,
    CanvasesData,
    CocoData,
    DataConfig,
    DigitsData,
    FashionMNISTData,
    LeafData,
    NaturalPartition,
    PartitionConfig,
    StoreData,
    SyntheticData,
)
from fedge.data import partition as P
from fedge.data.dataset import FederatedData
from fedge.errors import ConfigError

if TYPE_CHECKING:
    from fedge.data.detection import DetectionDataset

__all__ = [
    "load_data",
    "load_detection_data",
    "load_federated_detection",
    "partition_data",
    "partition_labels",
]

#: Share of a detection source's images held out for testing when it has no test split
#: (``fedge train`` holds out the same rows: see :func:`fedge.data.holdout.held_out_rows`).
DETECTION_TEST_FRACTION = 0.1


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
    if isinstance(config, StoreData):
        from fedge.data.store import load_store_data

        return load_store_data(config, seed=seed)
    if config.name in DETECTION_DATA:
        raise ConfigError(
            f"[data] {config.name} is detection data (boxes, not labels), and this command "
            "takes class labels: fedge simulate and fedge train train detectors, fedge data "
            "upload stores them"
        )
    raise ConfigError(f"unknown dataset {config!r}")


def load_detection_data(
    config: CanvasesData | CocoData, *, seed: int = 0
) -> tuple[DetectionDataset, DetectionDataset | None]:
    """The training and (if the source has one) test images and boxes of a detection
    ``[data]`` section."""
    if isinstance(config, CanvasesData):
        from fedge.data.canvases import CanvasConfig, fashion_mnist_canvases

        canvas = CanvasConfig(
            size=config.size,
            max_items=config.max_items,
            max_scale=min(CanvasConfig.max_scale, config.size / 28),
        )
        return fashion_mnist_canvases(
            config.num_train, config.num_test, seed=seed, config=canvas, data_dir=config.data_dir
        )
    from fedge.data.detection import load_coco

    train = load_coco(config.annotations, config.images)
    test = None
    if config.test_annotations is not None:
        test = load_coco(config.test_annotations, config.test_images, input_shape=train.input_shape)
    return train, test


def load_federated_detection(config: CanvasesData | CocoData, *, seed: int = 0) -> FederatedData:
    """A detection ``[data]`` section as the simulation's :class:`FederatedData`: images
    and padded boxes (:class:`~fedge.data.detection.DetectionDataset`) for ``train`` and
    ``test``. A source without a test split gets the seeded hold-out of
    :data:`DETECTION_TEST_FRACTION` of its images, the rows ``fedge train`` holds out."""
    from fedge.data.holdout import held_out_rows

    train, test = load_detection_data(config, seed=seed)
    if test is None or len(test) == 0:
        rows, held = held_out_rows(len(train), DETECTION_TEST_FRACTION, seed, config.name)
        train, test = train.subset(rows), train.subset(held)
    return FederatedData(name=config.name, train=train, test=test, num_classes=train.num_classes)


def partition_labels(data: FederatedData) -> tuple[np.ndarray, int]:
    """The label of each training example that label-skewed partitions split by, and the
    number of label values: the class for classification; for detection data the class
    of the image's largest box (images without boxes get an extra label of their own)."""
    y = data.train.y
    if y.ndim == 1:
        return y.numpy(), data.num_classes
    from fedge.data.detection import dominant_classes

    labels = dominant_classes(y)
    if (labels < 0).any():
        return np.where(labels < 0, data.num_classes, labels), data.num_classes + 1
    return labels, data.num_classes


def partition_data(
    data: FederatedData, config: PartitionConfig | None, *, seed: int = 0
) -> list[np.ndarray]:
    """Split ``data.train`` among clients as ``config`` says.

    With no ``[partition]`` section, data that comes split by user (LEAF, Synthetic) keeps
    its natural partition; other data needs one. The split is drawn with the section's
    ``seed`` when it has one, else with ``seed``. Detection data is split by each image's
    dominant class (:func:`partition_labels`).
    """
    if config is None or isinstance(config, NaturalPartition):
        if data.natural_partition is None:
            raise ConfigError(
                f"dataset {data.name} has no natural partition: add a [partition] section "
                "(scheme = iid, dirichlet, label_k, shards or quantity_skew)"
            )
        return P.natural(data.natural_partition)
    labels, num_labels = partition_labels(data)
    options = config.model_dump(exclude={"scheme", "num_clients", "seed"})
    if config.seed is not None:
        seed = config.seed
    if config.scheme in ("dirichlet", "label_k"):
        options["num_classes"] = num_labels
    return P.PARTITIONERS[config.scheme](labels, config.num_clients, seed=seed, **options)
