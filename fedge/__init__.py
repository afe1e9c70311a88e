"""fedge: federated and centralized training of models on data that lives on edge devices.

The public API is importable from here; submodules load on first use, so that
``import fedge`` stays cheap and the torch-free parts (the edge app) work without torch.
"""

from typing import TYPE_CHECKING

from fedge._lazy import lazy_exports
from fedge.errors import (
    ConfigError,
    DataError,
    FedgeError,
    ModelSpecError,
    ProtocolError,
    UpdateRejected,
)

__version__ = "0.1.0"

_EXPORTS = {
    "ExperimentConfig": "fedge.config",
    "load_config": "fedge.config",
    "ArrayDataset": "fedge.data.dataset",
    "FederatedData": "fedge.data.dataset",
    "LocalTraining": "fedge.fl.local",
    "evaluate": "fedge.fl.local",
    "train_client": "fedge.fl.local",
    "FedAvg": "fedge.fl.strategy",
    "FedAvgM": "fedge.fl.strategy",
    "FedAdagrad": "fedge.fl.strategy",
    "FedAdam": "fedge.fl.strategy",
    "FedYogi": "fedge.fl.strategy",
    "FedProx": "fedge.fl.strategy",
    "FedNova": "fedge.fl.strategy",
    "Scaffold": "fedge.fl.strategy",
    "Strategy": "fedge.fl.strategy",
    "ClientTask": "fedge.fl.types",
    "ClientUpdate": "fedge.fl.types",
    "Params": "fedge.fl.types",
    "ServerState": "fedge.fl.types",
    "ModelSpec": "fedge.models.spec",
    "build_model": "fedge.models.spec",
    "load_spec": "fedge.models.spec",
    "preset_spec": "fedge.models.spec",
    "prepare": "fedge.sim.experiment",
    "run": "fedge.sim.experiment",
    "run_to_folder": "fedge.sim.experiment",
    "CompareConfig": "fedge.compare",
    "load_compare_config": "fedge.compare",
    "run_comparison": "fedge.compare",
}

__getattr__ = lazy_exports(__name__, _EXPORTS)

__all__ = [
    "ArrayDataset",
    "ClientTask",
    "ClientUpdate",
    "CompareConfig",
    "ConfigError",
    "DataError",
    "ExperimentConfig",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedNova",
    "FedProx",
    "FedYogi",
    "FederatedData",
    "FedgeError",
    "LocalTraining",
    "ModelSpec",
    "ModelSpecError",
    "Params",
    "ProtocolError",
    "Scaffold",
    "ServerState",
    "Strategy",
    "UpdateRejected",
    "__version__",
    "build_model",
    "evaluate",
    "load_compare_config",
    "load_config",
    "load_spec",
    "prepare",
    "preset_spec",
    "run",
    "run_comparison",
    "run_to_folder",
    "train_client",
]

if TYPE_CHECKING:
    from fedge.compare import CompareConfig, load_compare_config, run_comparison
    from fedge.config import ExperimentConfig, load_config
    from fedge.data.dataset import ArrayDataset, FederatedData
    from fedge.fl.local import LocalTraining, evaluate, train_client
    from fedge.fl.strategy import (
        FedAdagrad,
        FedAdam,
        FedAvg,
        FedAvgM,
        FedNova,
        FedProx,
        FedYogi,
        Scaffold,
        Strategy,
    )
    from fedge.fl.types import ClientTask, ClientUpdate, Params, ServerState
    from fedge.models.spec import ModelSpec, build_model, load_spec, preset_spec
    from fedge.sim.experiment import prepare, run, run_to_folder
