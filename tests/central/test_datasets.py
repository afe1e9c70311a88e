"""Dataset versions in the object store: upload, append, list, validation, and the CLI."""

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from typer.testing import CliRunner

from fedge.central.datasets import DatasetArrays, DatasetStore, read_npz
from fedge.central.storage import LocalStore
from fedge.cli.main import app
from fedge.errors import DataError

runner = CliRunner()


def arrays(n=20, n_test=6, classes=3, seed=0, shape=(1, 2, 2)):
    rng = np.random.default_rng(seed)
    return DatasetArrays(
        x=rng.random((n, *shape), dtype=np.float32),
        y=rng.integers(0, classes, n),
        num_classes=classes,
        x_test=rng.random((n_test, *shape), dtype=np.float32),
        y_test=rng.integers(0, classes, n_test),
    )


@pytest.fixture
def datasets(tmp_path):
    return DatasetStore(LocalStore(tmp_path / "store"))


def test_upload_then_load_round_trips_on_every_backend(store):
    datasets = DatasetStore(store)
    a = arrays()
    v = datasets.upload("toy", a, source="unit test")
    assert (v.ref, v.version, v.parent, v.source) == ("toy@1", 1, None, "unit test")
    assert v.train.x_shape == [20, 1, 2, 2] and v.train.x_dtype == "float32"
    assert v.train.y_dtype == "int64" and v.test.x_shape == [6, 1, 2, 2]
    assert v.input_shape == [1, 2, 2] and v.num_classes == 3
    assert sum(v.train.class_counts) == 20
    back = datasets.load(datasets.get("toy", "latest"))
    np.testing.assert_array_equal(back.x, a.x)
    np.testing.assert_array_equal(back.y, a.y)
    np.testing.assert_array_equal(back.x_test, a.x_test)
    assert back.y.dtype == np.int64


def test_same_arrays_are_stored_once(datasets):
    first = datasets.upload("toy", arrays())
    second = datasets.upload("toy", arrays())
    assert (first.version, second.version) == (1, 2)
    assert first.sha256 == second.sha256
    assert len(datasets.store.list("blobs/")) == 1


def test_append_makes_a_new_version_of_parent_plus_samples(datasets):
    base = arrays()
    datasets.upload("toy", base)
    new = DatasetArrays(x=base.x[:4] + 0.5, y=np.array([2, 1, 0, 2]), num_classes=3)
    v2 = datasets.append("toy", new, parent=1, source="devices")
    assert (v2.version, v2.parent, v2.appended, v2.num_train, v2.num_test) == (2, 1, 4, 24, 6)
    got = datasets.load(v2)
    np.testing.assert_array_equal(got.x, np.concatenate([base.x, new.x]))
    np.testing.assert_array_equal(got.y[-4:], [2, 1, 0, 2])
    np.testing.assert_array_equal(got.x_test, base.x_test)
    assert datasets.get("toy", 1).num_train == 20  # the parent is untouched
    # Test samples sent along grow the test split.
    extra = DatasetArrays(
        x=base.x[:0], y=base.y[:0], num_classes=3, x_test=base.x[:2], y_test=[1, 1]
    )
    v3 = datasets.append("toy", extra)
    assert (v3.parent, v3.num_train, v3.num_test, v3.appended) == (2, 24, 8, 2)
    assert [v.version for v in datasets.versions("toy")] == [1, 2, 3]


def _sample(i, classes=3, shape=(1, 2, 2)):
    """One training sample whose every feature is ``i / 100``: which upload it came from
    can be read back from the stored arrays."""
    return DatasetArrays(
        x=np.full((1, *shape), i / 100, np.float32), y=np.array([i % classes]), num_classes=classes
    )


@pytest.mark.parametrize("start", ["existing", "new"])
def test_concurrent_appends_lose_no_sample_on_every_backend(store, start):
    """Eight writers append one sample each at once (on a dataset that exists, and on one
    that does not yet): every sample ends in the newest version, versions form one chain,
    and each writer's version holds its own sample."""
    datasets = DatasetStore(store)
    base = 0
    if start == "existing":
        base = datasets.upload("toy", arrays(n=4, n_test=0)).num_train
    writers = 8
    with ThreadPoolExecutor(writers) as pool:
        made = list(
            pool.map(lambda i: datasets.append("toy", _sample(i + 1), create=True), range(writers))
        )
    versions = datasets.versions("toy")
    assert [v.version for v in versions] == list(range(1, len(versions) + 1))
    assert [v.parent for v in versions[1:]] == [v.version for v in versions[:-1]]
    newest = datasets.load(versions[-1])
    assert newest.x.shape[0] == base + writers
    tags = sorted(np.round(newest.x[base:, 0, 0, 0] * 100).astype(int).tolist())
    assert tags == list(range(1, writers + 1))
    for i, version in enumerate(made):
        held = datasets.load(version).x[:, 0, 0, 0]
        assert np.isclose(held, (i + 1) / 100).sum() == 1, f"writer {i} lost its sample"


def test_an_append_to_an_older_version_is_refused(datasets):
    datasets.upload("toy", arrays())
    datasets.append("toy", _sample(1))
    with pytest.raises(DataError, match="version 1 of dataset 'toy' is not its newest"):
        datasets.append("toy", _sample(2), parent=1)
    assert datasets.append("toy", _sample(2), parent=2).version == 3
    with pytest.raises(DataError, match="unknown dataset 'other'"):
        datasets.append("other", _sample(3))


def _bad(kind):
    a = arrays()
    if kind == "nan":
        x = a.x.copy()
        x[3, 0, 1, 1] = np.nan
        return DatasetArrays(x, a.y, 3), "NaN or infinite"
    if kind == "label":
        return DatasetArrays(a.x, np.where(a.y == 0, 3, a.y), 3), "labels must lie in 0..2"
    if kind == "negative":
        return DatasetArrays(a.x, a.y - 1, 3), "labels must lie in 0..2"
    if kind == "length":
        return DatasetArrays(a.x, a.y[:-1], 3), "20 examples but 19 labels"
    if kind == "float_labels":
        return DatasetArrays(a.x, a.y.astype(np.float32), 3), "labels must be integers"
    if kind == "flat":
        return DatasetArrays(a.x.reshape(-1), a.y, 3), "features must have shape"
    if kind == "half_test":
        return DatasetArrays(a.x, a.y, 3, x_test=a.x_test), "needs both x_test and y_test"
    if kind == "empty":
        return DatasetArrays(a.x[:0], a.y[:0], 3), "at least one training example"
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind", ["nan", "label", "negative", "length", "float_labels", "flat", "half_test", "empty"]
)
def test_invalid_upload_is_refused_before_anything_is_written(datasets, kind):
    bad, message = _bad(kind)
    with pytest.raises(DataError, match=message):
        datasets.upload("toy", bad)
    assert datasets.store.list() == []


@pytest.mark.parametrize(
    ("x", "y", "message"),
    [
        (np.zeros((2, 1, 3, 2), np.float32), [0, 1], r"example shape \[1, 3, 2\].*\[1, 2, 2\]"),
        (np.zeros((2, 1, 2, 2), np.float64), [0, 1], "float64 .* holds float32"),
        (np.zeros((2, 1, 2, 2), np.float32), [0, 5], "labels must lie in 0..2"),
        (np.zeros((0, 1, 2, 2), np.float32), np.zeros(0, np.int64), "no new samples"),
    ],
)
def test_appended_samples_must_fit_the_parent(datasets, x, y, message):
    datasets.upload("toy", arrays())
    with pytest.raises(DataError, match=message):
        datasets.append("toy", DatasetArrays(x, np.asarray(y), 99))
    assert datasets.version_numbers("toy") == [1]


def test_unknown_names_and_versions_are_reported(datasets):
    with pytest.raises(DataError, match="no datasets uploaded yet"):
        datasets.get("toy")
    datasets.upload("toy", arrays())
    with pytest.raises(DataError, match=r"has no version 7 \(versions: 1\)"):
        datasets.get("toy", 7)
    with pytest.raises(DataError, match="datasets: toy"):
        datasets.versions("other")
    with pytest.raises(DataError, match="invalid dataset name"):
        datasets.upload("../up", arrays())


def test_read_npz_checks_the_file(tmp_path):
    good = tmp_path / "good.npz"
    np.savez(good, x=np.zeros((3, 4), np.float32), y=np.array([0, 4, 1]))
    assert read_npz(good).num_classes == 5
    np.savez(tmp_path / "no_y.npz", x=np.zeros((3, 4)))
    with pytest.raises(DataError, match="lacks the array"):
        read_npz(tmp_path / "no_y.npz")
    np.savez(tmp_path / "objects.npz", x=np.array([{"a": 1}], dtype=object), y=np.array([0]))
    with pytest.raises(DataError, match=r"array 'x' cannot be read: it holds Python objects"):
        read_npz(tmp_path / "objects.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"not an \.npz file"):
        read_npz(tmp_path / "junk.npz")
    with pytest.raises(DataError, match="not found"):
        read_npz(tmp_path / "missing.npz")


def test_cli_upload_append_and_list(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDGE_STORE", str(tmp_path / "store"))
    result = runner.invoke(app, ["data", "upload", "digits", "--set", "data.name=digits"])
    assert result.exit_code == 0, result.output
    assert "digits@1: 1,437 training and 360 test examples" in result.output
    samples = tmp_path / "new.npz"
    np.savez(samples, x=np.ones((5, 1, 8, 8), np.float32), y=np.arange(5))
    result = runner.invoke(app, ["data", "upload", "digits", str(samples), "--append-to", "latest"])
    assert result.exit_code == 0, result.output
    assert "5 new samples on version 1" in result.output
    result = runner.invoke(app, ["data", "versions", "digits", "--json"])
    manifests = json.loads(result.output)
    assert [(m["version"], m["parent"], m["train"]["x_shape"][0]) for m in manifests] == [
        (1, None, 1437),
        (2, 1, 1442),
    ]
    assert runner.invoke(app, ["data", "versions"]).exit_code == 0
    np.savez(samples, x=np.ones((5, 1, 8, 8), np.float32), y=np.arange(5) + 8)
    result = runner.invoke(app, ["data", "upload", "digits", str(samples), "--append-to", "2"])
    assert result.exit_code == 3
    assert "error: new samples: labels must lie in 0..9, found 8..12" in result.output
