"""Federated algorithms, each holding its server half and its client half."""

from fedge.fl.strategy.base import Strategy
from fedge.fl.strategy.fedavg import FedAvg, weighted_average

__all__ = ["FedAvg", "Strategy", "weighted_average"]
