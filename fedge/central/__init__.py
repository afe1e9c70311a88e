"""The centralized cloud pipeline: object storage, datasets, training jobs, model registry,
frozen-model export, serving and the edge app.

Names load on first use (see :mod:`fedge._lazy`), so the edge app needs no torch.
"""

from typing import TYPE_CHECKING

from fedge._lazy import lazy_exports
from fedge.errors import (
    ExportError,
    ModelNotFound,
    ObjectNotFound,
    RegistryError,
    StorageError,
)

_EXPORTS = {
    "export_bundle": "fedge.central.export",
    "export_onnx": "fedge.central.export",
    "verify_onnx": "fedge.central.export",
    "load_run": "fedge.central.publish",
    "publish_model": "fedge.central.publish",
    "publish_run": "fedge.central.publish",
    "FileRef": "fedge.central.registry",
    "ModelRegistry": "fedge.central.registry",
    "ModelVersion": "fedge.central.registry",
    "LocalStore": "fedge.central.storage",
    "ObjectStore": "fedge.central.storage",
    "S3Store": "fedge.central.storage",
    "open_store": "fedge.central.storage",
}

__getattr__ = lazy_exports(__name__, _EXPORTS)

__all__ = [
    "ExportError",
    "FileRef",
    "LocalStore",
    "ModelNotFound",
    "ModelRegistry",
    "ModelVersion",
    "ObjectNotFound",
    "ObjectStore",
    "RegistryError",
    "S3Store",
    "StorageError",
    "export_bundle",
    "export_onnx",
    "load_run",
    "open_store",
    "publish_model",
    "publish_run",
    "verify_onnx",
]

if TYPE_CHECKING:
    from fedge.central.export import export_bundle, export_onnx, verify_onnx
    from fedge.central.publish import load_run, publish_model, publish_run
    from fedge.central.registry import FileRef, ModelRegistry, ModelVersion
    from fedge.central.storage import LocalStore, ObjectStore, S3Store, open_store
