"""LEAF datasets (Caldas et al., 2018, arXiv:1812.01097) from their JSON files.

A LEAF folder has ``train/`` and ``test/`` subfolders of ``*.json`` files, each
``{"users": [...], "num_samples": [...], "user_data": {user: {"x": [...], "y": [...]}}}``
(plus an optional ``"hierarchies"`` list, which is accepted and ignored). Users become
the natural clients. Numeric features (FEMNIST's 784 pixels) load as float32; text
features (Shakespeare's 80-character windows) load as int64 ids in LEAF's own
80-character vocabulary, with the next character as the label.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedge.data.dataset import ArrayDataset, FederatedData
from fedge.errors import ConfigError, DataError

__all__ = ["ALL_LETTERS", "load_leaf"]

# The vocabulary of LEAF's Shakespeare utilities (models/utils/language_utils.py):
# a character's id is its position here.
ALL_LETTERS = "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"
_LOOKUP = np.full(max(map(ord, ALL_LETTERS)) + 1, -1, dtype=np.int64)
_LOOKUP[[ord(c) for c in ALL_LETTERS]] = np.arange(len(ALL_LETTERS))


@dataclass
class _Part:
    """The rows of one JSON file, users in file order."""

    path: Path
    users: list[tuple[str, int]]
    x: np.ndarray | None
    y: np.ndarray | None
    text: bool


def _char_ids(text: str, path: Path, what: str) -> np.ndarray:
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
    ids = np.where(codes < _LOOKUP.size, _LOOKUP[np.minimum(codes, _LOOKUP.size - 1)], -1)
    if (ids < 0).any():
        unknown = sorted({chr(c) for c in codes[ids < 0].tolist()})
        raise DataError(
            f"{path}: {what} has characters outside LEAF's vocabulary: {unknown[:10]!r}"
        )
    return ids


def _text_arrays(xs: list[Any], ys: list[Any], path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not all(isinstance(s, str) for s in xs):
        raise DataError(f"{path}: x mixes strings and other values")
    lengths = {len(s) for s in xs}
    if len(lengths) != 1:
        raise DataError(f"{path}: ragged x, text samples have lengths {sorted(lengths)[:5]}")
    if not all(isinstance(c, str) and len(c) == 1 for c in ys):
        raise DataError(f"{path}: y must be one character per text sample")
    x = _char_ids("".join(xs), path, "x").reshape(len(xs), lengths.pop())
    return x, _char_ids("".join(ys), path, "y")


def _numeric_arrays(xs: list[Any], ys: list[Any], path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        x = np.asarray(xs, dtype=np.float32)
    except (ValueError, TypeError) as exc:
        raise DataError(f"{path}: x is ragged or not numeric ({exc})") from exc
    if x.ndim == 1:
        x = x.reshape(-1, 1)
    try:
        y = np.asarray(ys, dtype=np.float64)
    except (ValueError, TypeError) as exc:
        raise DataError(f"{path}: y is not a list of integer labels ({exc})") from exc
    if y.ndim != 1 or not np.isfinite(y).all() or (y != np.round(y)).any():
        raise DataError(f"{path}: y is not a list of integer labels")
    if (y < 0).any():
        raise DataError(f"{path}: negative label {int(y.min())} in y")
    return x, y.astype(np.int64)


def _field(obj: dict[str, Any], key: str, kind: type, path: Path, where: str) -> Any:
    if key not in obj:
        raise DataError(f"{path}: missing key {key!r}{where}")
    value = obj[key]
    if not isinstance(value, kind):
        raise DataError(f"{path}: {key!r}{where} must be a {kind.__name__}")
    return value


def _read_file(path: Path) -> _Part:
    try:
        with path.open("rb") as fh:
            doc = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: invalid JSON ({exc})") from exc
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if not isinstance(doc, dict):
        raise DataError(f"{path}: top level must be a JSON object")
    users = _field(doc, "users", list, path, "")
    counts = _field(doc, "num_samples", list, path, "")
    user_data = _field(doc, "user_data", dict, path, "")
    if len(users) != len(counts):
        raise DataError(f"{path}: {len(users)} users but {len(counts)} num_samples entries")
    if len(set(users)) != len(users):
        raise DataError(f"{path}: a user is listed twice in 'users'")
    xs: list[Any] = []
    ys: list[Any] = []
    order = []
    for user, count in zip(users, counts, strict=True):
        if user not in user_data:
            raise DataError(f"{path}: user {user!r} is missing from user_data")
        where = f" of user {user!r}"
        record = user_data[user]
        if not isinstance(record, dict):
            raise DataError(f"{path}: user_data{where} must be an object")
        x = _field(record, "x", list, path, where)
        y = _field(record, "y", list, path, where)
        if len(x) != len(y):
            raise DataError(f"{path}: user {user!r} has {len(x)} x but {len(y)} y")
        if count != len(x):
            raise DataError(f"{path}: num_samples says {count} for user {user!r}, x has {len(x)}")
        xs += x
        ys += y
        order.append((str(user), len(x)))
    if not xs:
        return _Part(path, order, None, None, False)
    text = isinstance(xs[0], str)
    x, y = (_text_arrays if text else _numeric_arrays)(xs, ys, path)
    return _Part(path, order, x, y, text)


def _read_split(folder: Path) -> list[_Part]:
    if not folder.is_dir():
        raise DataError(f"LEAF folder {folder} does not exist")
    files = sorted(folder.glob("*.json"))
    if not files:
        raise DataError(f"LEAF folder {folder} has no *.json files")
    return [_read_file(path) for path in files]


@dataclass
class _Split:
    """All files of ``train/`` or ``test/`` pooled; ``x`` is ``None`` without samples."""

    x: np.ndarray | None
    y: np.ndarray
    text: bool
    rows: dict[str, list[np.ndarray]]
    source: Path


def _pool(parts: list[_Part], like: _Split | None) -> _Split:
    rows: dict[str, list[np.ndarray]] = {}
    offset = 0
    for part in parts:
        for user, count in part.users:
            rows.setdefault(user, []).append(np.arange(offset, offset + count, dtype=np.int64))
            offset += count
    xs, ys = [], []
    for part in parts:
        if part.x is None or part.y is None:
            continue
        if like is None or like.x is None:
            like = _Split(part.x, part.y, part.text, {}, part.path)
        if part.text != like.text or part.x.shape[1:] != like.x.shape[1:]:
            kind = "text" if part.text else "numeric"
            raise DataError(
                f"{part.path}: {kind} samples of shape {part.x.shape[1:]} do not match "
                f"those of {like.source}"
            )
        xs.append(part.x)
        ys.append(part.y)
    if not xs:
        return _Split(None, np.zeros(0, dtype=np.int64), False, rows, parts[0].path)
    return _Split(np.concatenate(xs), np.concatenate(ys), like.text, rows, parts[0].path)


def load_leaf(
    path: str | Path, *, input_shape: Sequence[int] | None = None, name: str = "leaf"
) -> FederatedData:
    """Load a LEAF dataset folder with users as natural clients.

    Parameters
    ----------
    path:
        Folder with ``train/`` and ``test/`` subfolders of LEAF JSON files, read in
        file-name order.
    input_shape:
        Shape of one example, e.g. ``(1, 28, 28)`` for FEMNIST; default ``None``
        keeps features flat as stored.
    name:
        Dataset name to report (default ``"leaf"``).

    Returns
    -------
    FederatedData
        ``client_ids`` are the training users in first-seen order,
        ``natural_partition[i]`` their training rows and ``natural_test_partition[i]``
        their test rows (empty where a user has none). Test users absent from
        training still count in the pooled test set. ``num_classes`` is 80 for text,
        else the largest label in train or test plus one.

    Raises
    ------
    ConfigError
        If ``input_shape`` has a non-positive entry.
    DataError
        If a folder or file is missing, malformed or inconsistent; the message names
        the file and the problem.
    """
    root = Path(path).expanduser()
    if input_shape is not None and any(int(d) < 1 for d in input_shape):
        raise ConfigError(f"input_shape must be positive, got {tuple(input_shape)}")
    train = _pool(_read_split(root / "train"), None)
    if train.x is None:
        raise DataError(f"LEAF folder {root / 'train'} holds no samples")
    test = _pool(_read_split(root / "test"), train)
    train_x, train_y = train.x, train.y
    test_x = train_x[:0] if test.x is None else test.x
    test_y = test.y
    if input_shape is not None:
        shape = tuple(int(d) for d in input_shape)
        if math.prod(shape) != math.prod(train_x.shape[1:]):
            raise DataError(
                f"{root}: samples have {math.prod(train_x.shape[1:])} values, "
                f"which cannot be reshaped to input_shape {shape}"
            )
        train_x = train_x.reshape(-1, *shape)
        test_x = test_x.reshape(-1, *shape)
    if train.text:
        num_classes = len(ALL_LETTERS)
    else:
        num_classes = int(max(train_y.max(), test_y.max(initial=0))) + 1
    empty = np.zeros(0, dtype=np.int64)
    client_ids = list(train.rows)
    return FederatedData(
        name=name,
        train=ArrayDataset(torch.from_numpy(train_x), torch.from_numpy(train_y)),
        test=ArrayDataset(torch.from_numpy(test_x), torch.from_numpy(test_y)),
        num_classes=num_classes,
        natural_partition=[np.concatenate(train.rows[u]) for u in client_ids],
        client_ids=client_ids,
        natural_test_partition=[
            np.concatenate(test.rows[u]) if u in test.rows else empty for u in client_ids
        ],
    )
