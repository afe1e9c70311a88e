"""Federated algorithms, each holding its server half and its client half."""

from fedge.fl.strategy.base import Strategy, Wrapper
from fedge.fl.strategy.fedavg import FedAvg, FedAvgM
from fedge.fl.strategy.fednova import FedNova
from fedge.fl.strategy.fedopt import FedAdagrad, FedAdam, FedOpt, FedYogi
from fedge.fl.strategy.fedprox import FedProx
from fedge.fl.strategy.scaffold import Scaffold

__all__ = [
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedNova",
    "FedOpt",
    "FedProx",
    "FedYogi",
    "Scaffold",
    "Strategy",
    "Wrapper",
]
