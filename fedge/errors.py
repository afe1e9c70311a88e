"""Exceptions raised by fedge.

Every error a user can cause derives from :class:`FedgeError`; the CLI turns one
into a single line on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DataError",
    "FedgeError",
    "ModelSpecError",
    "ProtocolError",
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
    """A message between server and client breaks the protocol."""

    exit_code = 5


class UpdateRejected(ProtocolError):
    """A client update was refused (wrong shapes, non-finite values, ...)."""
