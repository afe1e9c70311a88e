"""LEAF JSON folders: users as clients, numeric and text features, every corruption."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fedge.data.leaf import ALL_LETTERS, load_leaf
from fedge.errors import ConfigError, DataError


def leaf_doc(user_data: dict[str, dict[str, list]], **extra: Any) -> dict[str, Any]:
    users = list(user_data)
    return {
        "users": users,
        "num_samples": [len(user_data[u]["y"]) for u in users],
        "user_data": user_data,
        **extra,
    }


def write_json(path: Path, doc: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


def pixels(seed: int, n: int) -> list[list[float]]:
    return np.random.default_rng(seed).random((n, 16)).round(3).tolist()


@pytest.fixture
def femnist(tmp_path: Path) -> tuple[Path, dict[str, dict[str, list]]]:
    """Numeric data over two train files and one test file, with a test-only user."""
    train_a = {
        "w1": {"x": pixels(1, 3), "y": [0, 1, 2]},
        "w2": {"x": pixels(2, 2), "y": [3, 3]},
    }
    train_b = {"w3": {"x": pixels(3, 4), "y": [4, 0, 4, 1]}}
    test = {
        "w3": {"x": pixels(4, 2), "y": [0, 2]},
        "w1": {"x": pixels(5, 1), "y": [1]},
        "w9": {"x": pixels(6, 1), "y": [61]},
    }
    write_json(tmp_path / "train" / "a_train.json", leaf_doc(train_a, hierarchies=["h1", "h2"]))
    write_json(tmp_path / "train" / "b_train.json", leaf_doc(train_b))
    write_json(tmp_path / "test" / "a_test.json", leaf_doc(test))
    return tmp_path, {"train": train_a | train_b, "test": test}


def test_numeric_users_become_clients(femnist) -> None:
    root, raw = femnist
    data = load_leaf(root, name="femnist")
    assert data.name == "femnist"
    assert data.client_ids == ["w1", "w2", "w3"]
    assert [p.tolist() for p in data.natural_partition] == [[0, 1, 2], [3, 4], [5, 6, 7, 8]]
    assert data.train.x.dtype == torch.float32
    assert data.train.x.shape == (9, 16)
    assert data.train.y.tolist() == [0, 1, 2, 3, 3, 4, 0, 4, 1]
    for user, rows in zip(data.client_ids, data.natural_partition, strict=True):
        np.testing.assert_allclose(data.train.x[rows].numpy(), raw["train"][user]["x"], rtol=1e-6)


def test_test_rows_align_with_train_users(femnist) -> None:
    root, raw = femnist
    data = load_leaf(root)
    assert len(data.test) == 4, "a test-only user still counts in the pooled test set"
    assert [p.tolist() for p in data.natural_test_partition] == [[2], [], [0, 1]]
    assert data.natural_test_partition[1].dtype == np.int64
    assert data.test.y.tolist() == [0, 2, 1, 61]
    np.testing.assert_allclose(data.test.x[2].numpy(), raw["test"]["w1"]["x"][0], rtol=1e-6)


def test_numeric_num_classes_counts_test_labels(femnist) -> None:
    assert load_leaf(femnist[0]).num_classes == 62


def test_input_shape_reshapes_features(femnist) -> None:
    data = load_leaf(femnist[0], input_shape=(1, 4, 4))
    assert data.train.x.shape == (9, 1, 4, 4)
    assert data.test.x.shape == (4, 1, 4, 4)
    assert data.input_shape == (1, 4, 4)


def test_input_shape_must_fit_the_features(femnist) -> None:
    with pytest.raises(DataError, match="16 values"):
        load_leaf(femnist[0], input_shape=(1, 28, 28))
    with pytest.raises(ConfigError):
        load_leaf(femnist[0], input_shape=(0, 4))


def test_a_user_split_over_files_is_merged(tmp_path: Path) -> None:
    write_json(tmp_path / "train" / "1.json", leaf_doc({"u": {"x": [[1.0]], "y": [0]}}))
    write_json(tmp_path / "train" / "2.json", leaf_doc({"v": {"x": [[2.0]], "y": [1]}}))
    write_json(tmp_path / "train" / "3.json", leaf_doc({"u": {"x": [[3.0]], "y": [0]}}))
    write_json(tmp_path / "test" / "1.json", leaf_doc({"u": {"x": [[4.0]], "y": [1]}}))
    data = load_leaf(tmp_path)
    assert data.client_ids == ["u", "v"]
    assert [p.tolist() for p in data.natural_partition] == [[0, 2], [1]]
    assert data.train.x[:, 0].tolist() == [1.0, 2.0, 3.0]


def shakespeare_line(seed: int) -> str:
    rng = np.random.default_rng(seed)
    return "".join(ALL_LETTERS[i] for i in rng.integers(0, len(ALL_LETTERS), 80))


@pytest.fixture
def shakespeare(tmp_path: Path) -> Path:
    lines = [shakespeare_line(s) for s in range(5)]
    train = {
        "THE_TEMPEST_PROSPERO": {"x": lines[:3], "y": ["a", "\n", "}"]},
        "HAMLET_HORATIO": {"x": [lines[3]], "y": [" "]},
    }
    test = {"HAMLET_HORATIO": {"x": [lines[4]], "y": ["Z"]}}
    write_json(tmp_path / "train" / "all_data_niid_0_train_9.json", leaf_doc(train))
    write_json(tmp_path / "test" / "all_data_niid_0_test_9.json", leaf_doc(test))
    return tmp_path


def test_vocabulary_is_leafs_80_characters() -> None:
    assert len(ALL_LETTERS) == 80
    assert len(set(ALL_LETTERS)) == 80
    assert ALL_LETTERS[0] == "\n"
    assert ALL_LETTERS[-1] == "}"


def test_text_becomes_token_ids(shakespeare: Path) -> None:
    data = load_leaf(shakespeare, name="shakespeare")
    assert data.num_classes == 80
    assert data.train.x.dtype == torch.int64
    assert data.train.x.shape == (4, 80)
    assert data.train.x[0].tolist() == [ALL_LETTERS.index(c) for c in shakespeare_line(0)]
    assert data.train.y.tolist() == [ALL_LETTERS.index(c) for c in "a\n} "]
    assert data.test.y.tolist() == [ALL_LETTERS.index("Z")]
    assert data.client_ids == ["THE_TEMPEST_PROSPERO", "HAMLET_HORATIO"]
    assert [p.tolist() for p in data.natural_test_partition] == [[], [0]]


def _set(path: list[Any], value: Any):
    def edit(doc: dict[str, Any]) -> Any:
        target = doc
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        return doc

    return edit


def _drop(key: str):
    def edit(doc: dict[str, Any]) -> Any:
        del doc[key]
        return doc

    return edit


CORRUPTIONS = [
    ("missing users", _drop("users"), "missing key 'users'"),
    ("missing num_samples", _drop("num_samples"), "missing key 'num_samples'"),
    ("missing user_data", _drop("user_data"), "missing key 'user_data'"),
    ("not an object", lambda doc: [doc], "top level must be a JSON object"),
    ("users not a list", _set(["users"], "w1"), "'users' must be a list"),
    ("length mismatch", _set(["num_samples"], [3]), "2 users but 1 num_samples"),
    ("count mismatch", _set(["num_samples"], [3, 5]), "num_samples says 5 for user 'w2'"),
    ("user missing", _set(["users"], ["w1", "ghost"]), "user 'ghost' is missing from user_data"),
    ("duplicate user", _set(["users"], ["w1", "w1"]), "listed twice"),
    ("x/y mismatch", _set(["user_data", "w2", "y"], [1]), "user 'w2' has 2 x but 1 y"),
    ("no x", _set(["user_data", "w2"], {"y": [1, 1]}), "missing key 'x' of user 'w2'"),
    ("ragged x", _set(["user_data", "w2", "x"], [[0.5] * 16, [0.5] * 15]), "ragged"),
    ("text x", _set(["user_data", "w2", "x"], [[0.5] * 16, "abc"]), "ragged or not numeric"),
    ("negative label", _set(["user_data", "w2", "y"], [1, -1]), "negative label -1"),
    ("fractional label", _set(["user_data", "w2", "y"], [1, 0.5]), "integer labels"),
]


@pytest.mark.parametrize(
    ("edit", "fragment"), [c[1:] for c in CORRUPTIONS], ids=[c[0] for c in CORRUPTIONS]
)
def test_corrupt_file_names_file_and_problem(femnist, edit, fragment: str) -> None:
    root, _ = femnist
    path = root / "train" / "a_train.json"
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    with pytest.raises(DataError, match=fragment) as info:
        load_leaf(root)
    assert str(path) in str(info.value)


def test_invalid_json_names_file(femnist) -> None:
    root, _ = femnist
    path = root / "test" / "a_test.json"
    path.write_text('{"users": [')
    with pytest.raises(DataError, match="invalid JSON") as info:
        load_leaf(root)
    assert str(path) in str(info.value)


def test_float_labels_with_integer_values_are_accepted(tmp_path: Path) -> None:
    doc = leaf_doc({"f_00000": {"x": [[0.1, 0.2], [0.3, 0.4]], "y": [3.0, 1.0]}})
    write_json(tmp_path / "train" / "t.json", doc)
    write_json(tmp_path / "test" / "t.json", doc)
    data = load_leaf(tmp_path)
    assert data.train.y.tolist() == [3, 1]
    assert data.num_classes == 4


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (_set(["user_data", "HAMLET_HORATIO", "x"], ["short"]), "ragged x"),
        (_set(["user_data", "HAMLET_HORATIO", "y"], ["ab"]), "one character"),
        (_set(["user_data", "HAMLET_HORATIO", "x"], ["~" * 80]), "outside LEAF's vocabulary"),
        (_set(["user_data", "HAMLET_HORATIO", "y"], ["é"]), "outside LEAF's vocabulary"),
    ],
)
def test_bad_text_names_file_and_problem(shakespeare: Path, edit, fragment: str) -> None:
    path = shakespeare / "train" / "all_data_niid_0_train_9.json"
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    with pytest.raises(DataError, match=fragment) as info:
        load_leaf(shakespeare)
    assert str(path) in str(info.value)


def test_text_and_numeric_files_cannot_mix(shakespeare: Path) -> None:
    path = write_json(shakespeare / "test" / "b.json", leaf_doc({"u": {"x": [[1.0]], "y": [0]}}))
    with pytest.raises(DataError, match="numeric samples") as info:
        load_leaf(shakespeare)
    assert str(path) in str(info.value)


def test_empty_or_missing_folders(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_leaf(tmp_path)
    (tmp_path / "train").mkdir()
    with pytest.raises(DataError, match=r"train has no \*\.json files"):
        load_leaf(tmp_path)
    write_json(tmp_path / "train" / "a.json", leaf_doc({"u": {"x": [], "y": []}}))
    with pytest.raises(DataError, match="holds no samples"):
        load_leaf(tmp_path)
    write_json(tmp_path / "train" / "a.json", leaf_doc({"u": {"x": [[1.0]], "y": [0]}}))
    with pytest.raises(DataError, match="test does not exist"):
        load_leaf(tmp_path)


def test_empty_test_split_keeps_feature_shape(tmp_path: Path) -> None:
    write_json(tmp_path / "train" / "a.json", leaf_doc({"u": {"x": [[1.0, 2.0]], "y": [1]}}))
    write_json(tmp_path / "test" / "a.json", leaf_doc({}))
    data = load_leaf(tmp_path)
    assert data.test.x.shape == (0, 2)
    assert data.natural_test_partition[0].tolist() == []
    assert data.num_classes == 2
