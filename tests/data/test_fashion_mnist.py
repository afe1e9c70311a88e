"""Fashion-MNIST: IDX parsing, folder resolution, download from a loopback server."""

from __future__ import annotations

import functools
import gzip
import hashlib
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

from fedge.data import fashion_mnist as fm
from fedge.errors import ConfigError, DataError

N_TRAIN, N_TEST = 20, 5
STEMS = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# md5 of the *decompressed* upstream files (the .gz digests differ on Debian, which
# recompressed them).
UPSTREAM_RAW_MD5 = {
    "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
}


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    dims = np.asarray(array.shape, dtype=">u4").tobytes()
    return magic.to_bytes(4, "big") + dims + array.astype(np.uint8).tobytes()


def fixture_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "train_images": rng.integers(0, 256, (N_TRAIN, 28, 28), dtype=np.uint8),
        "train_labels": np.arange(N_TRAIN, dtype=np.uint8) % 10,
        "test_images": rng.integers(0, 256, (N_TEST, 28, 28), dtype=np.uint8),
        "test_labels": np.array([9, 0, 3, 3, 7], dtype=np.uint8),
    }


def write_fixture(folder: Path, *, gz: bool = True, seed: int = 0) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    arrays = fixture_arrays(seed)
    for key, stem in STEMS.items():
        payload = idx_bytes(arrays[key], 2051 if "images" in key else 2049)
        if gz:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(payload))
        else:
            (folder / stem).write_bytes(payload)
    return arrays


def assert_matches(data: fm.FederatedData, arrays: dict[str, np.ndarray]) -> None:
    assert data.name == "fashion_mnist"
    assert data.num_classes == 10
    assert data.natural_partition is None
    assert data.train.x.shape == (N_TRAIN, 1, 28, 28)
    assert data.test.x.shape == (N_TEST, 1, 28, 28)
    assert data.train.x.dtype == torch.float32
    assert data.train.y.dtype == torch.int64
    expected = arrays["train_images"].astype(np.float32)[:, None] / 255.0
    np.testing.assert_array_equal(data.train.x.numpy(), expected)
    np.testing.assert_array_equal(data.train.y.numpy(), arrays["train_labels"])
    np.testing.assert_array_equal(data.test.x.numpy()[:, 0] * 255.0, arrays["test_images"])
    np.testing.assert_array_equal(data.test.y.numpy(), arrays["test_labels"])


@pytest.fixture
def no_default_dirs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Hide the Debian copy, the user cache and FEDGE_DATA from the search."""
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "no-debian")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "no-cache"))
    monkeypatch.delenv("FEDGE_DATA", raising=False)


def test_loads_gzipped_files_from_data_dir(tmp_path: Path) -> None:
    arrays = write_fixture(tmp_path / "fm")
    assert_matches(fm.load_fashion_mnist(tmp_path / "fm"), arrays)


def test_loads_raw_files_from_fashion_mnist_subfolder(tmp_path: Path) -> None:
    arrays = write_fixture(tmp_path / "fashion-mnist", gz=False)
    assert fm.resolve_fashion_mnist_dir(tmp_path) == tmp_path / "fashion-mnist"
    assert_matches(fm.load_fashion_mnist(str(tmp_path)), arrays)


@pytest.mark.parametrize("sub", ["fashion-mnist", ""])
def test_loads_from_fedge_data_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_default_dirs: None, sub: str
) -> None:
    arrays = write_fixture(tmp_path / "root" / sub)
    monkeypatch.setenv("FEDGE_DATA", str(tmp_path / "root"))
    assert fm.resolve_fashion_mnist_dir() == tmp_path / "root" / sub
    assert_matches(fm.load_fashion_mnist(), arrays)


def test_fedge_data_wins_over_debian_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_fixture(tmp_path / "debian", seed=1)
    arrays = write_fixture(tmp_path / "env" / "fashion-mnist")
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "debian")
    monkeypatch.setenv("FEDGE_DATA", str(tmp_path / "env"))
    assert_matches(fm.load_fashion_mnist(), arrays)
    monkeypatch.setenv("FEDGE_DATA", str(tmp_path / "empty"))
    assert fm.resolve_fashion_mnist_dir() == tmp_path / "debian"


def test_nothing_found_says_where_it_looked_and_how_to_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_default_dirs: None
) -> None:
    monkeypatch.setenv("FEDGE_DATA", str(tmp_path / "env"))
    with pytest.raises(DataError) as info:
        fm.load_fashion_mnist()
    message = str(info.value)
    assert str(tmp_path / "env" / "fashion-mnist") in message
    assert str(tmp_path / "no-debian") in message
    assert "apt-get install -y dataset-fashion-mnist" in message
    assert "data.data_dir" in message
    assert "fedge data download fashion-mnist" in message


def test_explicit_dir_does_not_fall_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_fixture(tmp_path / "debian")
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "debian")
    with pytest.raises(DataError, match="not found"):
        fm.resolve_fashion_mnist_dir(tmp_path / "missing")


def test_partial_folder_is_not_accepted(tmp_path: Path, no_default_dirs: None) -> None:
    write_fixture(tmp_path / "fm")
    (tmp_path / "fm" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="not found"):
        fm.load_fashion_mnist(tmp_path / "fm")


def _truncate_gzip(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _short_payload(data: bytes) -> bytes:
    return gzip.compress(gzip.decompress(data)[:-28])


def _trailing_payload(data: bytes) -> bytes:
    return gzip.compress(gzip.decompress(data) + b"\x00")


def _wrong_magic(data: bytes) -> bytes:
    raw = bytearray(gzip.decompress(data))
    raw[3] = 0x01
    return gzip.compress(bytes(raw))


def _garbage(data: bytes) -> bytes:
    return b"\x1f\x8bnot really gzip"


@pytest.mark.parametrize(
    ("corrupt", "fragment"),
    [
        (_truncate_gzip, "corrupt or truncated gzip"),
        (_short_payload, "truncated"),
        (_trailing_payload, "trailing data"),
        (_wrong_magic, "magic number 2049, expected 2051"),
        (_garbage, "corrupt or truncated gzip"),
    ],
)
def test_corrupt_image_file_is_reported_by_name(tmp_path: Path, corrupt, fragment: str) -> None:
    write_fixture(tmp_path)
    target = tmp_path / "train-images-idx3-ubyte.gz"
    target.write_bytes(corrupt(target.read_bytes()))
    with pytest.raises(DataError, match=fragment) as info:
        fm.load_fashion_mnist(tmp_path)
    assert str(target) in str(info.value)


def test_image_and_label_counts_must_agree(tmp_path: Path) -> None:
    write_fixture(tmp_path)
    labels = np.zeros(N_TRAIN - 1, dtype=np.uint8)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels, 2049)))
    with pytest.raises(DataError, match=f"{N_TRAIN} images but .* {N_TRAIN - 1} labels"):
        fm.load_fashion_mnist(tmp_path)


def test_labels_above_nine_are_rejected(tmp_path: Path) -> None:
    write_fixture(tmp_path)
    labels = np.full(N_TEST, 10, dtype=np.uint8)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(labels, 2049))
    with pytest.raises(DataError, match="label 10"):
        fm.load_fashion_mnist(tmp_path)


def test_read_idx_returns_header_dimensions(tmp_path: Path) -> None:
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a").write_bytes(idx_bytes(array, 2051))
    np.testing.assert_array_equal(fm.read_idx(tmp_path / "a", 2051), array)


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, str, list]]:
    """A loopback HTTP server over a folder; yields (folder, base URL, requested paths)."""
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    root = tmp_path / "www"
    root.mkdir()
    requested: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, directory=str(root), **kwargs)

        def do_GET(self) -> None:
            requested.append(self.path)
            super().do_GET()

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}/data/", requested
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def served_fixture(root: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    arrays = write_fixture(root / "data")
    sums = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in (root / "data").iterdir()}
    return arrays, sums


def test_download_then_load(server, tmp_path: Path) -> None:
    root, url, requested = server
    arrays, sums = served_fixture(root)
    dest = tmp_path / "dest"
    assert fm.download_fashion_mnist(dest, base_url=url, checksums=sums) == dest
    assert sorted(p.name for p in dest.iterdir()) == sorted(sums)
    assert_matches(fm.load_fashion_mnist(dest), arrays)
    assert len(requested) == 4
    fm.download_fashion_mnist(dest, base_url=url.rstrip("/"), checksums=sums, progress=True)
    assert len(requested) == 4, "files with the right checksum must not be fetched again"


def test_download_replaces_a_damaged_file(server, tmp_path: Path) -> None:
    root, url, requested = server
    _, sums = served_fixture(root)
    dest = tmp_path / "dest"
    fm.download_fashion_mnist(dest, base_url=url, checksums=sums)
    (dest / "t10k-labels-idx1-ubyte.gz").write_bytes(b"damaged")
    fm.download_fashion_mnist(dest, base_url=url, checksums=sums)
    assert requested[4:] == ["/data/t10k-labels-idx1-ubyte.gz"]
    assert (
        hashlib.md5((dest / "t10k-labels-idx1-ubyte.gz").read_bytes()).hexdigest()
        == sums["t10k-labels-idx1-ubyte.gz"]
    )


def test_checksum_mismatch_leaves_no_file(server, tmp_path: Path) -> None:
    root, url, _ = server
    _, sums = served_fixture(root)
    sums["train-images-idx3-ubyte.gz"] = "0" * 32
    dest = tmp_path / "dest"
    with pytest.raises(DataError, match=r"expected 0{32}"):
        fm.download_fashion_mnist(dest, base_url=url, checksums=sums)
    assert list(dest.iterdir()) == []


def test_http_404_is_a_data_error(server, tmp_path: Path) -> None:
    _, url, _ = server
    dest = tmp_path / "dest"
    with pytest.raises(DataError, match="HTTP 404"):
        fm.download_fashion_mnist(dest, base_url=url)
    assert list(dest.iterdir()) == []


def test_unreachable_server_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"downloading http://127\.0\.0\.1:9/"):
        fm.download_fashion_mnist(tmp_path, base_url="http://127.0.0.1:9/", timeout=2.0)
    assert list(tmp_path.iterdir()) == []


def test_checksums_must_cover_every_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="t10k-labels"):
        fm.download_fashion_mnist(tmp_path, checksums={"train-images-idx3-ubyte.gz": "0" * 32})


def test_load_with_download_fetches_into_data_dir(
    server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, url, _ = server
    arrays, sums = served_fixture(root)
    fetch = functools.partial(fm.download_fashion_mnist, base_url=url, checksums=sums)
    monkeypatch.setattr(fm, "download_fashion_mnist", fetch)
    assert_matches(fm.load_fashion_mnist(tmp_path / "dl", download=True), arrays)
    assert (tmp_path / "dl" / "train-images-idx3-ubyte.gz").is_file()


def test_default_checksums_are_the_official_ones() -> None:
    assert fm.FASHION_MNIST_MD5 == {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    }


def _require_debian_copy() -> Path:
    folder = Path("/usr/share/datasets/fashion-mnist")
    if not all((folder / f"{stem}.gz").is_file() for stem in STEMS.values()):
        pytest.fail(
            f"Fashion-MNIST is not in {folder}; CI installs it with "
            "`apt-get install -y dataset-fashion-mnist`"
        )
    return folder


def test_real_debian_files_load_with_expected_shapes_and_counts() -> None:
    data = fm.load_fashion_mnist(_require_debian_copy())
    assert data.train.x.shape == (60_000, 1, 28, 28)
    assert data.test.x.shape == (10_000, 1, 28, 28)
    assert data.train.x.dtype == torch.float32
    assert data.train.y.dtype == torch.int64
    assert float(data.train.x.min()) == 0.0
    assert float(data.train.x.max()) == 1.0
    assert 0.2 < float(data.train.x.mean()) < 0.4
    assert torch.bincount(data.train.y).tolist() == [6000] * 10
    assert torch.bincount(data.test.y).tolist() == [1000] * 10


def test_real_debian_files_decompress_to_upstream_bytes() -> None:
    folder = _require_debian_copy()
    for stem, md5 in UPSTREAM_RAW_MD5.items():
        with gzip.open(folder / f"{stem}.gz") as fh:
            assert hashlib.md5(fh.read()).hexdigest() == md5, stem
