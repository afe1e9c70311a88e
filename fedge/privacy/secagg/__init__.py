"""Secure aggregation, SecAgg+: the server learns the sum of a cohort's updates and
nothing about any one of them.

* :mod:`~fedge.privacy.secagg.crypto` — X25519, HKDF, AES-GCM, AES-CTR masks, Shamir.
* :mod:`~fedge.privacy.secagg.params` — the graph degree k and threshold t for a cohort.
* :mod:`~fedge.privacy.secagg.protocol` — the client and server state machines.
* :mod:`~fedge.privacy.secagg.encoding` — clipping and stochastic quantization.
* :mod:`~fedge.privacy.secagg.noisy` — distributed DP's codec: scaled, rounded and noised
  by the client, decoded as centred integers.
* :mod:`~fedge.privacy.secagg.aggregation` — the strategies' sum path and the
  simulation wrapper.
* :mod:`~fedge.privacy.secagg.simulate` — the protocol run in one process.
"""

from fedge.privacy.secagg.aggregation import (
    RoundPlan,
    SecAggSettings,
    SecureAggregation,
    apply_secure_sum,
    contribution,
    plan_round,
)
from fedge.privacy.secagg.crypto import SecAggRefused
from fedge.privacy.secagg.noisy import SkellamCodec
from fedge.privacy.secagg.params import GraphParameters, find_parameters
from fedge.privacy.secagg.protocol import (
    PublicKeys,
    RoundSetup,
    SecAggAborted,
    SecAggClient,
    SecAggServer,
    View,
)
from fedge.privacy.secagg.simulate import Traffic, run_in_process

__all__ = [
    "GraphParameters",
    "PublicKeys",
    "RoundPlan",
    "RoundSetup",
    "SecAggAborted",
    "SecAggClient",
    "SecAggRefused",
    "SecAggServer",
    "SecAggSettings",
    "SecureAggregation",
    "SkellamCodec",
    "Traffic",
    "View",
    "apply_secure_sum",
    "contribution",
    "find_parameters",
    "plan_round",
    "run_in_process",
]
