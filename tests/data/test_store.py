"""A simulation reads a dataset version from the store, the data and test set a training
job reads."""

import numpy as np
import pytest
import torch

from fedge.central.datasets import DatasetArrays, DatasetStore
from fedge.central.jobs import prepare_job
from fedge.central.storage import LocalStore
from fedge.central.train_config import parse_train_config
from fedge.config import parse_config
from fedge.data.digits import load_digits
from fedge.errors import ConfigError, DataError
from fedge.sim.experiment import prepare, run_to_folder


@pytest.fixture
def store_url(tmp_path):
    """digits@1 with its own test split, digits@2 = its training examples without one."""
    url = str(tmp_path / "store")
    datasets = DatasetStore(LocalStore(url))
    arrays = DatasetArrays.from_data(load_digits())
    datasets.upload("digits", arrays)
    datasets.upload("digits", DatasetArrays(arrays.x, arrays.y, arrays.num_classes))
    return url


def experiment(store_url, version, seed=3):
    return parse_config(
        {
            "name": "from-store",
            "seed": seed,
            "rounds": 2,
            "data": {"name": "store", "dataset": "digits", "version": version, "store": store_url},
            "partition": {"scheme": "iid", "num_clients": 4},
            "model": {"preset": "mlp", "hidden": [16]},
            "server": {"clients_per_round": 2},
        }
    )


def job(store_url, version, seed=3):
    return prepare_job(
        parse_train_config(
            {
                "store": store_url,
                "dataset": {"name": "digits", "version": version},
                "model": {"preset": "mlp", "hidden": [16]},
                "train": {"seed": seed},
            }
        )
    )


@pytest.mark.parametrize("version", [1, 2], ids=["own-test-split", "held-out"])
def test_simulation_and_job_read_the_same_data_and_test_set(store_url, version):
    fed, j = prepare(experiment(store_url, version)), job(store_url, version)
    assert fed.data.name == f"digits@{version}" == j.data_version
    assert torch.equal(fed.data.test.x, j.x_test) and torch.equal(fed.data.test.y, j.y_test)
    assert torch.equal(fed.data.train.x, j.x_train) and torch.equal(fed.data.train.y, j.y_train)


def test_the_held_out_test_set_follows_the_seed(store_url):
    a, b = prepare(experiment(store_url, 2, seed=3)), prepare(experiment(store_url, 2, seed=4))
    assert len(a.data.test) == len(b.data.test) == round(0.1 * 1437)
    assert not torch.equal(a.data.test.y, b.data.test.y)


def test_latest_resolves_to_the_newest_version_and_the_summary_names_it(store_url, tmp_path):
    fed = prepare(experiment(store_url, "latest"))
    summary, _ = run_to_folder(fed, tmp_path / "run")
    assert summary["data_version"] == "digits@2" == summary["dataset"]
    assert (summary["num_train"], summary["num_test"]) == (len(fed.data.train), 144)


def test_an_unknown_dataset_or_version_is_a_data_error(store_url):
    with pytest.raises(DataError, match="has no version 9"):
        prepare(experiment(store_url, 9))
    bad = experiment(store_url, 1).model_dump()
    bad["data"]["dataset"] = "nope"
    with pytest.raises(DataError, match="unknown dataset 'nope'"):
        prepare(parse_config(bad))


def test_a_store_section_is_validated():
    with pytest.raises(ConfigError, match=r"data\.store\.dataset: Field required"):
        parse_config({"rounds": 1, "data": {"name": "store"}, "model": {"preset": "logreg"}})
    assert np.isclose(
        parse_config(
            {"rounds": 1, "data": {"name": "store", "dataset": "d"}, "model": {"preset": "mlp"}}
        ).data.test_fraction,
        0.1,
    )
