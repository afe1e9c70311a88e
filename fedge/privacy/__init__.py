"""Differential privacy for federated training: DP-FedAvg and its privacy ledger.

* :mod:`fedge.privacy.dpfedavg` — clipping, uniform sum and Gaussian noise on the server
  (McMahan et al., ICLR 2018), as a wrapper around any sum-based strategy.
* :mod:`fedge.privacy.clipping` — adaptive clipping to a quantile (Andrew et al., NeurIPS
  2021).
* :mod:`fedge.privacy.ledger` — ε per round from Google's ``dp-accounting`` (RDP).
* :mod:`fedge.privacy.local` — local DP: each client clips and noises its own update.
* :mod:`fedge.privacy.distributed` — distributed DP: each client adds its share of Skellam
  noise before secure aggregation (:mod:`fedge.privacy.skellam`, Agarwal et al. 2021).
* :mod:`fedge.privacy.plan` — an experiment's ``[privacy]`` section, resolved.
* :mod:`fedge.privacy.secagg` — secure aggregation (SecAgg+).

What the guarantee covers, and what it does not: ``docs/privacy.md``.
"""

from fedge.privacy.clipping import AdaptiveClipping, sum_noise_multiplier
from fedge.privacy.distributed import DistributedDP
from fedge.privacy.dpfedavg import ClipTally, DPFedAvg, GaussianSum, noise_generator
from fedge.privacy.ledger import (
    PrivacyLedger,
    calibrate_noise_multiplier,
    default_delta,
    round_event,
)
from fedge.privacy.local import LocalDP, client_noise_generator
from fedge.privacy.plan import PrivacyPlan, plan_privacy, plan_report
from fedge.privacy.skellam import SkellamParameters

__all__ = [
    "AdaptiveClipping",
    "ClipTally",
    "DPFedAvg",
    "DistributedDP",
    "GaussianSum",
    "LocalDP",
    "PrivacyLedger",
    "PrivacyPlan",
    "SkellamParameters",
    "calibrate_noise_multiplier",
    "client_noise_generator",
    "default_delta",
    "noise_generator",
    "plan_privacy",
    "plan_report",
    "round_event",
    "sum_noise_multiplier",
]
