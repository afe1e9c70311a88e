import numpy as np
import pytest

from fedge.errors import ConfigError
from fedge.fl.sampling import clients_per_round, sample_clients


def test_cohort_size_from_count_or_fraction():
    assert clients_per_round(100, count=10) == 10
    assert clients_per_round(100, fraction=0.1) == 10
    assert clients_per_round(7, fraction=0.01) == 1
    assert clients_per_round(10, fraction=1.0) == 10


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"count": 11}, "more than the number of clients"),
        ({"fraction": 0.0}, r"\(0, 1\]"),
        ({"fraction": 1.5}, r"\(0, 1\]"),
        ({}, "exactly one"),
        ({"count": 2, "fraction": 0.5}, "exactly one"),
    ],
)
def test_bad_cohort_sizes_are_rejected(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        clients_per_round(10, **kwargs)


def test_sampling_is_distinct_sorted_and_seeded():
    a = sample_clients(1000, 50, seed=3, round=7)
    assert len(np.unique(a)) == 50
    assert np.all(np.diff(a) > 0)
    assert np.array_equal(a, sample_clients(1000, 50, seed=3, round=7))
    assert not np.array_equal(a, sample_clients(1000, 50, seed=3, round=8))
    assert not np.array_equal(a, sample_clients(1000, 50, seed=4, round=7))


def test_sampling_is_uniform_over_many_rounds():
    counts = np.zeros(20)
    for r in range(2000):
        counts[sample_clients(20, 5, seed=0, round=r)] += 1
    # each client expected 500 times; 5 sigma of a binomial(2000, 0.25) is ~97
    assert np.all(np.abs(counts - 500) < 100)
