"""Datasets, partitioners and partition statistics."""

from fedge.data.dataset import ArrayDataset, FederatedData

__all__ = ["ArrayDataset", "FederatedData"]
