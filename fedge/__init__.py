"""fedge: federated and centralized training of models on data that lives on edge devices."""

from fedge.config import ExperimentConfig, load_config
from fedge.data.dataset import ArrayDataset, FederatedData
from fedge.errors import (
    ConfigError,
    DataError,
    FedgeError,
    ModelSpecError,
    ProtocolError,
    UpdateRejected,
)
from fedge.fl.local import LocalTraining, evaluate, train_client
from fedge.fl.strategy import FedAvg, Strategy
from fedge.fl.types import ClientTask, ClientUpdate, Params, ServerState
from fedge.models.spec import ModelSpec, build_model, load_spec, preset_spec

__version__ = "0.1.0"

__all__ = [
    "ArrayDataset",
    "ClientTask",
    "ClientUpdate",
    "ConfigError",
    "DataError",
    "ExperimentConfig",
    "FedAvg",
    "FederatedData",
    "FedgeError",
    "LocalTraining",
    "ModelSpec",
    "ModelSpecError",
    "Params",
    "ProtocolError",
    "ServerState",
    "Strategy",
    "UpdateRejected",
    "__version__",
    "build_model",
    "evaluate",
    "load_config",
    "load_spec",
    "preset_spec",
    "train_client",
]
