"""The centralized cloud pipeline: object storage, model registry, frozen-model export."""

from fedge.central.export import export_bundle, export_onnx, verify_onnx
from fedge.central.publish import load_run, publish_model, publish_run
from fedge.central.registry import FileRef, ModelRegistry, ModelVersion
from fedge.central.storage import LocalStore, ObjectStore, S3Store, open_store
from fedge.errors import (
    ExportError,
    ModelNotFound,
    ObjectNotFound,
    RegistryError,
    StorageError,
)

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
