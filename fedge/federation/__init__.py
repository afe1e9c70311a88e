"""Federated learning for real: a coordination server and the devices that train with it.

:class:`FederationServer` (the rules and the durable state) behind
:func:`create_app`/:func:`run_federation_server` (HTTP); :class:`FederatedClient` (a
Python device). The protocol is in ``docs/protocol.md``.
"""

from typing import TYPE_CHECKING

from fedge._lazy import lazy_exports

_EXPORTS = {
    "ClientSettings": "fedge.federation.client",
    "FederatedClient": "fedge.federation.client",
    "FederationServer": "fedge.federation.server",
    "create_app": "fedge.federation.app",
    "run_federation_server": "fedge.federation.app",
}

__getattr__ = lazy_exports(__name__, _EXPORTS)

__all__ = [
    "ClientSettings",
    "FederatedClient",
    "FederationServer",
    "create_app",
    "run_federation_server",
]

if TYPE_CHECKING:
    from fedge.federation.app import create_app, run_federation_server
    from fedge.federation.client import ClientSettings, FederatedClient
    from fedge.federation.server import FederationServer
