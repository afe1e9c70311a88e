"""The inference server of the centralized pipeline (``fedge serve``): Open Inference
Protocol paths and ``/predict`` over onnxruntime with dynamic micro-batching, hot swap of
promoted versions, over-the-air downloads with ETags, and sample uploads from devices."""

from fedge.central.serving.app import create_app
from fedge.central.serving.batcher import BatchStats, MicroBatcher
from fedge.central.serving.models import LoadedModel, ModelPool
from fedge.central.serving.samples import store_samples
from fedge.central.serving.server import run_server
from fedge.central.serving.settings import ServeSettings

__all__ = [
    "BatchStats",
    "LoadedModel",
    "MicroBatcher",
    "ModelPool",
    "ServeSettings",
    "create_app",
    "run_server",
    "store_samples",
]
