import pytest

from fedge.config import parse_config


def digits_config(**sections):
    """A tiny experiment on sklearn's digits; keyword arguments replace whole sections."""
    base = {
        "name": "digits-test",
        "seed": 0,
        "rounds": 3,
        "data": {"name": "digits"},
        "partition": {"scheme": "dirichlet", "num_clients": 8, "beta": 0.5},
        "model": {"preset": "mlp", "hidden": [32]},
        "client": {"epochs": 1, "batch_size": 16, "lr": 0.1, "momentum": 0.5},
        "server": {"clients_per_round": 4},
    }
    base.update(sections)
    return base


@pytest.fixture
def digits():
    return lambda **sections: parse_config(digits_config(**sections))
