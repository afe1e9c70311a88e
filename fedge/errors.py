"""Exceptions raised by fedge.

Every error a user can cause derives from :class:`FedgeError`; the CLI turns one
into a single line on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DataError",
    "ExportError",
    "FedgeError",
    "ModelNotFound",
    "ModelSpecError",
    "ObjectNotFound",
    "ProtocolError",
    "RegistryError",
    "RequestRejected",
    "ServingError",
    "StaleUpdate",
    "StorageError",
    "TrainingError",
    "Unauthorized",
    "UpdateRejected",
]


class FedgeError(Exception):
    """Base class of every error fedge raises on purpose."""

    exit_code: int = 1


class ConfigError(FedgeError):
    """An experiment or command configuration is invalid."""

    exit_code = 2


class DataError(FedgeError):
    """A dataset is missing, corrupt, or cannot be partitioned as asked."""

    exit_code = 3


class ModelSpecError(FedgeError):
    """A model specification is malformed or inconsistent with its input."""

    exit_code = 4


class ProtocolError(FedgeError):
    """A message between server and client breaks the protocol; ``status`` is the HTTP
    status the federation server answers it with."""

    exit_code = 5
    status: int = 400


class UpdateRejected(ProtocolError):
    """A client update was refused (wrong shapes, non-finite values, ...)."""

    status = 400


class StaleUpdate(ProtocolError):
    """An update or request names a round or model version that is not the open one, the
    round has closed, or the device already reported (answered 409 by the server)."""

    status = 409


class Unauthorized(ProtocolError):
    """Unknown device, wrong token or wrong enrollment secret (answered 401)."""

    status = 401


class StorageError(FedgeError):
    """The object store refused or failed an operation (bad key, I/O error, no access)."""

    exit_code = 6


class ObjectNotFound(StorageError):
    """No object is stored under the requested key."""


class RegistryError(FedgeError):
    """A model registry operation is invalid (bad name, missing file, corrupt manifest)."""

    exit_code = 7


class ModelNotFound(RegistryError):
    """The registry has no such model, version or alias."""


class ExportError(FedgeError):
    """A model could not be exported, or the exported model disagrees with PyTorch."""

    exit_code = 8


class ServingError(FedgeError):
    """The inference server or the edge app cannot do what was asked (server unreachable,
    request refused, no model cached yet)."""

    exit_code = 9


class RequestRejected(ServingError):
    """A request to the inference server is malformed, too large, or names an unknown
    model; ``status`` is the HTTP status code it is answered with (4xx)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class TrainingError(FedgeError):
    """A training job failed while running (diverged, or a worker process died)."""

    exit_code = 10
