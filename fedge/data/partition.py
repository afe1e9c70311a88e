"""Split a labelled training set among clients.

Every partitioner returns one int64 array of row indices per client, the arrays
pairwise disjoint, drawn from ``numpy.random.default_rng(seed)`` so that a seed
fixes the result. The label-based schemes follow NIID-Bench (Li et al.,
"Federated Learning on Non-IID Data Silos: An Experimental Study", ICDE 2022,
``partition_data`` in ``Xtra-Computing/NIID-Bench/utils.py``); ``shards`` is the
pathological split of McMahan et al., "Communication-Efficient Learning of Deep
Networks from Decentralized Data", AISTATS 2017.

All work is vectorised over rows: 60,000 labels split among 1,000 clients take
milliseconds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from fedge.errors import ConfigError, DataError

__all__ = [
    "PARTITIONERS",
    "dirichlet",
    "iid",
    "label_k",
    "natural",
    "quantity_skew",
    "shards",
]

MAX_TRIES = 1000
"""Redraws allowed before a partitioner with a ``min_size`` gives up."""


def _check_labels(labels: np.ndarray, num_clients: int) -> np.ndarray:
    """Labels as a 1-D int64 array, checked against ``num_clients``."""
    arr = np.asarray(labels)
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise DataError(
            f"labels must be a 1-D integer array, got dtype {arr.dtype} with shape {arr.shape}"
        )
    if isinstance(num_clients, bool) or not isinstance(num_clients, int | np.integer):
        raise ConfigError(f"num_clients must be an integer, got {num_clients!r}")
    if num_clients < 1:
        raise ConfigError(f"num_clients must be at least 1, got {num_clients}")
    if num_clients > arr.shape[0]:
        raise DataError(f"cannot split {arr.shape[0]} rows among {num_clients} clients")
    if arr.size and arr.min() < 0:
        raise DataError(f"labels must be non-negative, got {arr.min()}")
    return arr.astype(np.int64, copy=False)


def _check_classes(labels: np.ndarray, num_classes: int | None) -> int:
    """Number of classes: ``num_classes`` if given (checked), else ``max(labels) + 1``."""
    top = int(labels.max()) + 1
    if num_classes is None:
        return top
    if num_classes < 1:
        raise ConfigError(f"num_classes must be at least 1, got {num_classes}")
    if top > num_classes:
        raise DataError(f"label {top - 1} is out of range for num_classes={num_classes}")
    return int(num_classes)


def _check_beta(beta: float) -> float:
    if not np.isfinite(beta) or beta <= 0:
        raise ConfigError(f"beta (Dirichlet concentration) must be positive, got {beta}")
    return float(beta)


def _check_min_size(min_size: int, n_rows: int, num_clients: int) -> None:
    if min_size < 0:
        raise ConfigError(f"min_size must be non-negative, got {min_size}")
    if min_size * num_clients > n_rows:
        raise DataError(
            f"cannot give each of {num_clients} clients at least {min_size} of {n_rows} rows"
        )


def _group(rows: np.ndarray, owners: np.ndarray, num_clients: int) -> list[np.ndarray]:
    """Rows grouped by owner, keeping their order within each owner."""
    order = np.argsort(owners, kind="stable")
    counts = np.bincount(owners, minlength=num_clients)
    grouped = rows[order].astype(np.int64, copy=False)
    return [part.copy() for part in np.split(grouped, np.cumsum(counts)[:-1])]


def _split_sizes(n: int, parts: int) -> np.ndarray:
    """Part sizes of ``np.array_split`` of ``n`` items into ``parts``."""
    sizes = np.full(parts, n // parts, dtype=np.int64)
    sizes[: n % parts] += 1
    return sizes


def iid(labels: np.ndarray, num_clients: int, *, seed: int = 0) -> list[np.ndarray]:
    """Shuffle all rows and deal them into near-equal parts (NIID-Bench ``homo``).

    Parameters
    ----------
    labels:
        1-D integer labels of the training set; only its length is used.
    num_clients:
        Number of parts, 1 to ``len(labels)``.
    seed:
        Seed of ``numpy.random.default_rng``; default 0.

    Returns
    -------
    list of np.ndarray
        One int64 index array per client; sizes differ by at most one.
    """
    y = _check_labels(labels, num_clients)
    perm = np.random.default_rng(seed).permutation(y.shape[0])
    return [part.copy() for part in np.array_split(perm, num_clients)]


def dirichlet(
    labels: np.ndarray,
    num_clients: int,
    *,
    beta: float,
    seed: int = 0,
    min_size: int = 10,
    num_classes: int | None = None,
) -> list[np.ndarray]:
    """Label-distribution skew: each class split among clients by Dir(β) proportions.

    NIID-Bench ``noniid-labeldir`` (Li et al., ICDE 2022). Class by class, shuffle the
    class's rows and draw ``p ~ Dir(β · 1)`` over clients; zero the share of every
    client that already holds at least ``N / num_clients`` rows (their balancing step),
    renormalise, and cut the shuffled rows at ``floor(cumsum(p) · n_class)``. The whole
    draw is repeated until every client holds at least ``min_size`` rows. The draws are
    NIID-Bench's call for call, as Flower's baseline makes them with
    ``numpy.random.default_rng(seed)``, so a seed gives that baseline's partition.

    Parameters
    ----------
    labels:
        1-D integer labels ``0 .. num_classes-1``.
    num_clients:
        Number of clients, 1 to ``len(labels)``.
    beta:
        Dirichlet concentration, > 0; smaller is more skewed (0.1 is severe, 100 is
        close to IID).
    seed:
        Seed of ``numpy.random.default_rng``; default 0.
    min_size:
        Fewest rows any client may hold; default 10 as in NIID-Bench.
    num_classes:
        Number of classes; default ``max(labels) + 1``.

    Returns
    -------
    list of np.ndarray
        One int64 index array per client, covering every row; rows grouped by label in
        ascending order, shuffled within a label.

    Raises
    ------
    DataError
        If no draw within ``MAX_TRIES`` (1000) gives every client ``min_size`` rows.
    """
    y = _check_labels(labels, num_clients)
    b = _check_beta(beta)
    n_cls = _check_classes(y, num_classes)
    n_rows = y.shape[0]
    _check_min_size(min_size, n_rows, num_clients)
    rng = np.random.default_rng(seed)
    class_rows = [np.flatnonzero(y == c) for c in range(n_cls)]
    cap = n_rows / num_clients
    alpha = np.full(num_clients, b)

    for _ in range(MAX_TRIES):
        held = np.zeros(num_clients, dtype=np.int64)
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for idx in class_rows:
            idx = rng.permutation(idx)
            p = rng.dirichlet(alpha) * (held < cap)
            total = p.sum()
            if not total > 0:  # every client full: impossible while rows remain
                break
            cuts = (np.cumsum(p / total) * idx.size).astype(np.int64)[:-1]
            for j, piece in enumerate(np.split(idx, cuts)):
                parts[j].append(piece)
                held[j] += piece.size
        else:
            if held.min() >= min_size:
                break
    else:
        raise DataError(
            f"dirichlet partition with beta={b} gave some of {num_clients} clients fewer "
            f"than min_size={min_size} rows in {MAX_TRIES} draws; raise beta or lower "
            "min_size or num_clients"
        )
    return [np.concatenate(p).astype(np.int64, copy=False) for p in parts]


def label_k(
    labels: np.ndarray,
    num_clients: int,
    *,
    k: int,
    seed: int = 0,
    num_classes: int | None = None,
) -> list[np.ndarray]:
    """Quantity-based label skew "#C=k": every client holds exactly ``k`` labels.

    NIID-Bench ``noniid-#label{k}`` (Li et al., ICDE 2022). Client ``i`` holds label
    ``i mod C`` and ``k - 1`` other distinct labels drawn uniformly at random (draws
    of a label already held are repeated); the shuffled rows of each label are dealt in
    near-equal parts (``np.array_split``) to the clients holding it, in client order.
    The random draws are those of NIID-Bench's procedure as Flower's baseline makes them
    with ``numpy.random.default_rng(seed)``, so the same seed gives the same partition.
    Rows of labels that no client holds are left out. With ``k == C`` every client holds every
    label.

    Parameters
    ----------
    labels:
        1-D integer labels ``0 .. num_classes-1``.
    num_clients:
        Number of clients, 1 to ``len(labels)``.
    k:
        Labels per client, 1 to ``num_classes``.
    seed:
        Seed of ``numpy.random.default_rng``; default 0.
    num_classes:
        Number of classes ``C``; default ``max(labels) + 1``.

    Returns
    -------
    list of np.ndarray
        One int64 index array per client, rows grouped by label in ascending order.
    """
    y = _check_labels(labels, num_clients)
    n_cls = _check_classes(y, num_classes)
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= n_cls:
        raise ConfigError(f"k (labels per client) must be in 1..{n_cls}, got {k!r}")
    rng = np.random.default_rng(seed)
    # NIID-Bench's draw, call for call as in Flower's baseline (which uses
    # numpy.random.default_rng(seed) too, so a seed gives its partition): draw labels
    # uniformly until k distinct ones are held, then deal each shuffled label.
    holds = np.zeros((num_clients, n_cls), dtype=bool)
    for i in range(num_clients):
        holds[i, i % n_cls] = True
        while holds[i].sum() < k:
            holds[i, rng.choice(n_cls, 1)[0]] = True
    rows, owners = [], []
    for c in range(n_cls):
        holders = np.flatnonzero(holds[:, c])
        if holders.size == 0:
            continue
        idx = rng.permutation(np.flatnonzero(y == c))
        rows.append(idx)
        owners.append(np.repeat(holders, _split_sizes(idx.size, holders.size)))
    return _group(np.concatenate(rows), np.concatenate(owners), num_clients)


def shards(
    labels: np.ndarray, num_clients: int, *, shards_per_client: int = 2, seed: int = 0
) -> list[np.ndarray]:
    """Pathological non-IID split of McMahan et al. (AISTATS 2017).

    Rows are sorted by label (stably), cut into ``num_clients * shards_per_client``
    contiguous shards of near-equal size (``np.array_split``), and each client gets
    ``shards_per_client`` shards drawn at random without replacement. With shards no
    larger than a class, a client sees at most ``shards_per_client`` labels.

    Parameters
    ----------
    labels:
        1-D integer labels.
    num_clients:
        Number of clients, 1 to ``len(labels)``.
    shards_per_client:
        Shards per client, >= 1; default 2 as in the paper.
    seed:
        Seed of ``numpy.random.default_rng``; default 0.

    Returns
    -------
    list of np.ndarray
        One int64 index array per client, covering every row, sorted by label.
    """
    y = _check_labels(labels, num_clients)
    if shards_per_client < 1:
        raise ConfigError(f"shards_per_client must be at least 1, got {shards_per_client}")
    n_shards = num_clients * shards_per_client
    if n_shards > y.shape[0]:
        raise DataError(f"cannot cut {y.shape[0]} rows into {n_shards} non-empty shards")
    rng = np.random.default_rng(seed)
    by_label = np.argsort(y, kind="stable")
    shard_owner = np.empty(n_shards, dtype=np.int64)
    shard_owner[rng.permutation(n_shards)] = np.repeat(np.arange(num_clients), shards_per_client)
    owner = np.repeat(shard_owner, _split_sizes(y.shape[0], n_shards))
    return _group(by_label, owner, num_clients)


def quantity_skew(
    labels: np.ndarray,
    num_clients: int,
    *,
    beta: float,
    seed: int = 0,
    min_size: int = 10,
) -> list[np.ndarray]:
    """Quantity skew: IID labels, client sizes in Dir(β) proportions.

    NIID-Bench ``iid-diff-quantity`` (Li et al., ICDE 2022): draw ``p ~ Dir(β · 1)``
    over clients until ``min(p) · N >= min_size``, then cut a random permutation of
    the rows at ``floor(cumsum(p) · N)``.

    Parameters
    ----------
    labels:
        1-D integer labels; only its length is used.
    num_clients:
        Number of clients, 1 to ``len(labels)``.
    beta:
        Dirichlet concentration, > 0; smaller gives more unequal sizes.
    seed:
        Seed of ``numpy.random.default_rng``; default 0.
    min_size:
        Fewest rows any client may hold; default 10 as in NIID-Bench.

    Returns
    -------
    list of np.ndarray
        One int64 index array per client, covering every row, in random order.

    Raises
    ------
    DataError
        If no draw within ``MAX_TRIES`` (1000) gives every client ``min_size`` rows.
    """
    y = _check_labels(labels, num_clients)
    b = _check_beta(beta)
    n_rows = y.shape[0]
    _check_min_size(min_size, n_rows, num_clients)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n_rows)
    alpha = np.full(num_clients, b)
    for _ in range(MAX_TRIES):
        p = rng.dirichlet(alpha)
        p = p / p.sum()
        if p.min() * n_rows >= min_size:
            break
    else:
        raise DataError(
            f"quantity_skew partition with beta={b} gave some of {num_clients} clients "
            f"fewer than min_size={min_size} rows in {MAX_TRIES} draws; raise beta or "
            "lower min_size or num_clients"
        )
    cuts = (np.cumsum(p) * n_rows).astype(np.int64)[:-1]
    return [part.copy() for part in np.split(perm, cuts)]


def natural(partition: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Check and return a partition that comes with the data (LEAF users).

    Parameters
    ----------
    partition:
        Row indices of each user, e.g. ``FederatedData.natural_partition``.

    Returns
    -------
    list of np.ndarray
        The same indices as int64 copies.

    Raises
    ------
    DataError
        If the partition is empty, an entry is not a 1-D array of non-negative
        integers, or a row belongs to more than one user (or twice to one).
    """
    if len(partition) == 0:
        raise DataError("natural partition has no users")
    parts = []
    for i, part in enumerate(partition):
        arr = np.asarray(part)
        if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
            raise DataError(
                f"natural partition entry {i} must be a 1-D integer array, "
                f"got dtype {arr.dtype} with shape {arr.shape}"
            )
        if arr.size and arr.min() < 0:
            raise DataError(f"natural partition entry {i} has negative index {arr.min()}")
        parts.append(arr.astype(np.int64))
    flat = np.concatenate(parts)
    uniq, counts = np.unique(flat, return_counts=True)
    if uniq.size != flat.size:
        dup = uniq[counts > 1]
        raise DataError(
            f"natural partition is not disjoint: {dup.size} rows appear more than once "
            f"(first: row {dup[0]})"
        )
    return parts


PARTITIONERS: dict[str, Callable[..., list[np.ndarray]]] = {
    "iid": iid,
    "dirichlet": dirichlet,
    "label_k": label_k,
    "shards": shards,
    "quantity_skew": quantity_skew,
}
"""Partitioners by the name used in experiment configs."""
