"""Partitioners: determinism, disjointness, coverage and the definition of each scheme."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pytest

from fedge.data import partition as part_mod
from fedge.data.partition import (
    PARTITIONERS,
    dirichlet,
    iid,
    label_k,
    natural,
    quantity_skew,
    shards,
)
from fedge.errors import ConfigError, DataError

NUM_CLASSES = 10


def balanced_labels(per_class: int = 100, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """``per_class`` rows of each label, in a fixed shuffled order."""
    y = np.repeat(np.arange(num_classes), per_class)
    return np.random.default_rng(1234).permutation(y)


def label_hist(parts: list[np.ndarray], y: np.ndarray, num_classes: int) -> np.ndarray:
    return np.stack([np.bincount(y[p], minlength=num_classes) for p in parts])


# Every partitioner with arguments that make it well defined on balanced_labels().
CASES = {
    "iid": (iid, {}),
    "dirichlet": (dirichlet, {"beta": 0.5}),
    "label_k": (label_k, {"k": 2}),
    "shards": (shards, {"shards_per_client": 2}),
    "quantity_skew": (quantity_skew, {"beta": 1.0}),
}
COVERING = ["iid", "dirichlet", "shards", "quantity_skew"]


def run(name: str, seed: int, num_clients: int = 20) -> list[np.ndarray]:
    fn, kwargs = CASES[name]
    return fn(balanced_labels(), num_clients, seed=seed, **kwargs)


def test_registry_names_every_partitioner() -> None:
    assert {name: fn for name, (fn, _) in CASES.items()} == PARTITIONERS


@pytest.mark.parametrize("name", list(CASES))
def test_same_seed_gives_identical_partition(name: str) -> None:
    a, b = run(name, seed=7), run(name, seed=7)
    assert len(a) == len(b) == 20
    for x, z in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, z)


@pytest.mark.parametrize("name", list(CASES))
def test_different_seed_gives_different_partition(name: str) -> None:
    a, b = run(name, seed=7), run(name, seed=8)
    assert any(x.shape != z.shape or not np.array_equal(x, z) for x, z in zip(a, b, strict=True))


@pytest.mark.parametrize("name", list(CASES))
def test_parts_are_int64_and_disjoint(name: str) -> None:
    parts = run(name, seed=3)
    assert all(p.dtype == np.int64 and p.ndim == 1 for p in parts)
    flat = np.concatenate(parts)
    assert np.unique(flat).size == flat.size


@pytest.mark.parametrize("name", COVERING)
def test_partition_covers_every_row(name: str) -> None:
    flat = np.concatenate(run(name, seed=3))
    np.testing.assert_array_equal(np.sort(flat), np.arange(balanced_labels().size))


def test_iid_sizes_differ_by_at_most_one() -> None:
    y = np.zeros(1003, dtype=np.int64)
    sizes = [p.size for p in iid(y, 10, seed=0)]
    assert sum(sizes) == 1003
    assert max(sizes) - min(sizes) == 1


def test_dirichlet_respects_min_size_when_it_binds() -> None:
    y = balanced_labels()
    free = [min(p.size for p in dirichlet(y, 20, beta=0.3, seed=s, min_size=0)) for s in range(5)]
    assert min(free) < 30, "min_size=30 would not constrain anything in this setting"
    for s in range(5):
        assert min(p.size for p in dirichlet(y, 20, beta=0.3, seed=s, min_size=30)) >= 30


def test_dirichlet_smaller_beta_is_more_label_skewed() -> None:
    y = balanced_labels()

    def labels_with_5pct_share(beta: float) -> float:
        shares = []
        for s in range(3):
            hist = label_hist(dirichlet(y, 10, beta=beta, seed=s), y, NUM_CLASSES)
            frac = hist / hist.sum(axis=1, keepdims=True)
            shares.append((frac >= 0.05).sum(axis=1).mean())
        return float(np.mean(shares))

    skewed, mild = labels_with_5pct_share(0.1), labels_with_5pct_share(10.0)
    assert skewed < 5 < mild


def test_dirichlet_balancing_stops_feeding_full_clients() -> None:
    # A client is skipped once it holds N / num_clients = 100 rows, so it can end
    # with at most 99 + one class (100 rows).
    y = balanced_labels()
    for s in range(5):
        sizes = [p.size for p in dirichlet(y, 10, beta=0.05, seed=s, min_size=0)]
        assert max(sizes) < 200


def niid_bench_dirichlet(
    y: np.ndarray, num_clients: int, beta: float, seed: int, min_size: int = 10
) -> list[list[int]]:
    """NIID-Bench's Dir(β) procedure, written out step by step with a numpy Generator (as
    Flower's baseline runs it): the oracle that dirichlet must match row for row."""
    prng = np.random.default_rng(seed)
    smallest = 0
    while smallest < min_size:
        clients: list[list[int]] = [[] for _ in range(num_clients)]
        for c in range(NUM_CLASSES):
            idx_c = np.where(y == c)[0]
            prng.shuffle(idx_c)
            p = prng.dirichlet(np.repeat(beta, num_clients))
            p = np.array(
                [q * (len(rows) < len(y) / num_clients) for q, rows in zip(p, clients, strict=True)]
            )
            p = p / p.sum()
            cuts = (np.cumsum(p) * len(idx_c)).astype(int)[:-1]
            clients = [
                rows + part.tolist()
                for rows, part in zip(clients, np.split(idx_c, cuts), strict=True)
            ]
        smallest = min(len(rows) for rows in clients)
    return clients


@pytest.mark.parametrize(
    ("num_clients", "beta", "seed"), [(10, 0.5, 42), (10, 0.1, 42), (23, 1.0, 7), (30, 0.1, 0)]
)
def test_dirichlet_draws_exactly_niid_benchs_partition(num_clients, beta, seed) -> None:
    # (30, 0.1, 0): the first draws leave a client below min_size, so it redraws.
    y = np.random.default_rng(3).integers(0, NUM_CLASSES, 2003)
    ours = dirichlet(y, num_clients, beta=beta, seed=seed)
    assert [p.tolist() for p in ours] == niid_bench_dirichlet(y, num_clients, beta, seed)


def test_dirichlet_gives_up_with_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(part_mod, "MAX_TRIES", 5)
    with pytest.raises(DataError, match=r"beta=0\.001.*50 clients.*min_size=15"):
        dirichlet(balanced_labels(), 50, beta=0.001, min_size=15)


def test_dirichlet_rejects_impossible_min_size() -> None:
    with pytest.raises(DataError, match="at least 60"):
        dirichlet(balanced_labels(), 20, beta=1.0, min_size=60)


def test_label_k_client_holds_own_label_and_exactly_k() -> None:
    y = balanced_labels()
    for k in (1, 2, 3, 9):
        hist = label_hist(label_k(y, 25, k=k, seed=k), y, NUM_CLASSES)
        assert ((hist > 0).sum(axis=1) == k).all()
        assert (hist[np.arange(25), np.arange(25) % NUM_CLASSES] > 0).all()


def niid_bench_label_k(y: np.ndarray, num_clients: int, k: int, seed: int) -> list[list[int]]:
    """NIID-Bench's #C=k procedure, written out step by step with a numpy Generator (as
    Flower's baseline runs it): the oracle that label_k must match row for row."""
    prng = np.random.default_rng(seed)
    times = [0] * NUM_CLASSES
    contains = []
    for i in range(num_clients):
        current = [i % NUM_CLASSES]
        times[i % NUM_CLASSES] += 1
        while len(current) < k:
            label = prng.choice(NUM_CLASSES, 1)[0]
            if label not in current:
                current.append(label)
                times[label] += 1
        contains.append(current)
    clients: list[list[int]] = [[] for _ in range(num_clients)]
    for label in range(NUM_CLASSES):
        rows = np.where(y == label)[0]
        prng.shuffle(rows)
        pieces = iter(np.array_split(rows, times[label]))
        for j in range(num_clients):
            if label in contains[j]:
                clients[j] += next(pieces).tolist()
    return clients


@pytest.mark.parametrize(("num_clients", "k", "seed"), [(10, 3, 42), (10, 2, 42), (23, 4, 7)])
def test_label_k_draws_exactly_niid_benchs_partition(num_clients, k, seed) -> None:
    y = np.random.default_rng(3).integers(0, NUM_CLASSES, 997)
    ours = label_k(y, num_clients, k=k, seed=seed)
    reference = niid_bench_label_k(y, num_clients, k, seed)
    assert [p.tolist() for p in ours] == reference


def test_label_k_splits_each_label_equally_among_holders() -> None:
    y = balanced_labels()
    hist = label_hist(label_k(y, 25, k=3, seed=0), y, NUM_CLASSES)
    for c in range(NUM_CLASSES):
        held = hist[:, c][hist[:, c] > 0]
        assert held.sum() == 100
        assert held.max() - held.min() <= 1


def test_label_k_covers_exactly_rows_of_held_labels() -> None:
    y = balanced_labels()
    parts = label_k(y, 3, k=2, seed=5)
    held = np.unique(y[np.concatenate(parts)])
    assert held.size < NUM_CLASSES, "with 3 clients x 2 labels some label must be unheld"
    expected = np.flatnonzero(np.isin(y, held))
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), expected)


def test_label_k_with_k_equal_classes_gives_every_client_every_label() -> None:
    y = balanced_labels()
    hist = label_hist(label_k(y, 7, k=NUM_CLASSES, seed=0), y, NUM_CLASSES)
    assert (hist > 0).all()
    assert hist.sum() == y.size


@pytest.mark.parametrize("k", [0, NUM_CLASSES + 1])
def test_label_k_rejects_k_out_of_range(k: int) -> None:
    with pytest.raises(ConfigError, match=r"1\.\.10"):
        label_k(balanced_labels(), 5, k=k)


def test_shards_aligned_with_classes_give_at_most_two_labels_and_equal_sizes() -> None:
    y = balanced_labels()  # 10 classes x 100 rows; 100 shards of 10 rows each
    parts = shards(y, 50, shards_per_client=2, seed=0)
    assert {p.size for p in parts} == {20}
    hist = label_hist(parts, y, NUM_CLASSES)
    assert ((hist > 0).sum(axis=1) <= 2).all()
    assert ((hist > 0).sum(axis=1) == 2).any()


def test_shards_rejects_more_shards_than_rows() -> None:
    with pytest.raises(DataError, match="shards"):
        shards(np.arange(10), 6, shards_per_client=2)


def test_quantity_skew_sizes_differ_but_labels_stay_global() -> None:
    y = balanced_labels(per_class=1000)
    parts = quantity_skew(y, 10, beta=0.5, seed=2, min_size=100)
    sizes = np.array([p.size for p in parts])
    assert sizes.min() >= 100
    assert sizes.max() > 3 * sizes.min()
    hist = label_hist(parts, y, NUM_CLASSES)
    big = sizes >= 500
    assert big.sum() >= 3
    frac = hist[big] / sizes[big, None]
    tv = 0.5 * np.abs(frac - 0.1).sum(axis=1)
    assert tv.max() < 0.1


def test_natural_returns_int64_copies() -> None:
    given = [np.array([0, 2], dtype=np.int32), np.array([1, 3, 4], dtype=np.int32)]
    out = natural(given)
    assert [p.dtype for p in out] == [np.int64, np.int64]
    np.testing.assert_array_equal(out[1], [1, 3, 4])
    out[0][0] = 99
    assert given[0][0] == 0


@pytest.mark.parametrize(
    "given",
    [
        [np.array([0, 1]), np.array([1, 2])],
        [np.array([0, 0, 1])],
    ],
)
def test_natural_rejects_overlap(given: list[np.ndarray]) -> None:
    with pytest.raises(DataError, match="not disjoint"):
        natural(given)


def test_natural_rejects_non_integer_and_empty() -> None:
    with pytest.raises(DataError, match="integer"):
        natural([np.array([0.5, 1.0])])
    with pytest.raises(DataError, match="no users"):
        natural([])


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"num_clients": 0}, ConfigError, "at least 1"),
        ({"num_clients": 1001}, DataError, "1000 rows among 1001"),
        ({"beta": 0.0}, ConfigError, "beta"),
        ({"beta": -1.0}, ConfigError, "beta"),
        ({"labels": np.linspace(0, 1, 1000)}, DataError, "integer"),
        ({"labels": np.zeros((10, 100), dtype=np.int64)}, DataError, "1-D"),
        ({"labels": np.full(1000, -1)}, DataError, "non-negative"),
        ({"num_classes": 5}, DataError, "num_classes=5"),
    ],
)
def test_bad_inputs_raise_with_message(kwargs: dict, error: type, message: str) -> None:
    args = {"labels": balanced_labels(), "num_clients": 10, "beta": 0.5} | kwargs
    with pytest.raises(error, match=message):
        dirichlet(args.pop("labels"), args.pop("num_clients"), **args)


def test_quantity_skew_rejects_bad_beta() -> None:
    with pytest.raises(ConfigError, match="beta"):
        quantity_skew(balanced_labels(), 10, beta=0)


@pytest.mark.parametrize(
    ("fn", "kwargs"),
    [
        (iid, {}),
        (dirichlet, {"beta": 0.5}),
        (label_k, {"k": 2}),
        (shards, {}),
        (quantity_skew, {"beta": 100.0}),
    ],
)
def test_mnist_scale_is_fast(fn: Callable[..., list[np.ndarray]], kwargs: dict) -> None:
    y = np.random.default_rng(0).integers(0, 10, 60_000)
    start = time.perf_counter()
    parts = fn(y, 1000, seed=0, **kwargs)
    assert time.perf_counter() - start < 1.0
    assert len(parts) == 1000
