"""Fashion-MNIST (Xiao et al., 2017, arXiv:1708.07747): find, parse, and download it.

The four IDX files are looked up in an explicit folder, then under ``$FEDGE_DATA``,
then where the Debian package ``dataset-fashion-mnist`` installs them, then in the
user cache that :func:`load_fashion_mnist` downloads into. Each file may be gzipped
or raw; the parser checks magic numbers, dimensions and the exact byte count, so a
truncated or corrupt file is reported instead of silently yielding fewer images.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import tempfile
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from fedge.data.dataset import ArrayDataset, FederatedData
from fedge.errors import ConfigError, DataError

__all__ = [
    "DEBIAN_DIR",
    "FASHION_MNIST_MD5",
    "FASHION_MNIST_URL",
    "download_fashion_mnist",
    "load_fashion_mnist",
    "read_idx",
    "resolve_fashion_mnist_dir",
]

FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")

# md5 of the gzipped files as published by Zalando. Debian recompressed its copies,
# so these digests match a fresh download but not the files in DEBIAN_DIR (whose
# decompressed contents are identical to upstream).
FASHION_MNIST_MD5: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}

_STEMS = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_LABEL_MAGIC = 2049
_IMAGE_MAGIC = 2051
_SIDE = 28
_NUM_CLASSES = 10
_CHUNK = 1 << 16


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fedge" / "fashion-mnist"


def _find_file(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        candidate = folder / name
        if candidate.is_file():
            return candidate
    return None


def _has_all_files(folder: Path) -> bool:
    return all(_find_file(folder, stem) is not None for stem in _STEMS)


def _candidate_dirs(data_dir: str | Path | None) -> list[Path]:
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        return [root, root / "fashion-mnist"]
    candidates = []
    env = os.environ.get("FEDGE_DATA")
    if env:
        root = Path(env).expanduser()
        candidates += [root / "fashion-mnist", root]
    return [*candidates, DEBIAN_DIR, _cache_dir()]


def resolve_fashion_mnist_dir(data_dir: str | Path | None = None) -> Path:
    """Folder that holds the four Fashion-MNIST IDX files.

    Parameters
    ----------
    data_dir:
        Explicit folder (or its ``fashion-mnist/`` subfolder). When given, no other
        place is searched. Default ``None`` searches ``$FEDGE_DATA/fashion-mnist/``,
        ``$FEDGE_DATA``, ``/usr/share/datasets/fashion-mnist/`` and the user cache
        (``~/.cache/fedge/fashion-mnist``), in that order.

    Returns
    -------
    Path
        The first folder that has all four files, gzipped or raw.

    Raises
    ------
    DataError
        If no searched folder has all four files; the message lists where it looked.
    """
    candidates = _candidate_dirs(data_dir)
    for folder in candidates:
        if _has_all_files(folder):
            return folder
    looked = ", ".join(str(folder) for folder in candidates)
    raise DataError(
        f"Fashion-MNIST not found (looked in: {looked}); install it with "
        "`apt-get install -y dataset-fashion-mnist`, set `data.data_dir` (or $FEDGE_DATA) "
        "to a folder with "
        f"{', '.join(s + '.gz' for s in _STEMS)}, or run `fedge data download fashion-mnist`"
    )


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path} is a corrupt or truncated gzip file: {exc}") from exc


def read_idx(path: str | Path, magic: int) -> np.ndarray:
    """Parse one unsigned-byte IDX file (gzipped or raw) without copying its payload.

    Parameters
    ----------
    path:
        The file.
    magic:
        Expected magic number: 2049 for labels (1-D), 2051 for images (3-D).

    Returns
    -------
    numpy.ndarray
        Read-only uint8 array with the dimensions stored in the header.

    Raises
    ------
    DataError
        On a wrong magic number or a byte count that disagrees with the header.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise DataError(f"{path} is too short to be an IDX file ({len(data)} bytes)")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise DataError(f"{path} has IDX magic number {found}, expected {magic}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path} is truncated inside its IDX header")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(data) != expected:
        raise DataError(
            f"{path} holds {len(data)} bytes but its IDX header {dims} implies {expected}"
            f" ({'truncated' if len(data) < expected else 'trailing data'})"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _load_split(folder: Path, prefix: str) -> ArrayDataset:
    image_path = _find_file(folder, f"{prefix}-images-idx3-ubyte")
    label_path = _find_file(folder, f"{prefix}-labels-idx1-ubyte")
    if image_path is None or label_path is None:
        raise DataError(f"{folder} lacks the Fashion-MNIST {prefix} files")
    images = read_idx(image_path, _IMAGE_MAGIC)
    labels = read_idx(label_path, _LABEL_MAGIC)
    if images.shape[1:] != (_SIDE, _SIDE):
        raise DataError(f"{image_path} holds images of {images.shape[1:]}, expected (28, 28)")
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{image_path} has {images.shape[0]} images but {label_path} has "
            f"{labels.shape[0]} labels"
        )
    if labels.size and int(labels.max()) >= _NUM_CLASSES:
        raise DataError(f"{label_path} has label {int(labels.max())}, expected 0..9")
    x = images.astype(np.float32).reshape(-1, 1, _SIDE, _SIDE)
    x /= 255.0
    return ArrayDataset(torch.from_numpy(x), torch.from_numpy(labels.astype(np.int64)))


def load_fashion_mnist(
    data_dir: str | Path | None = None, *, download: bool = False
) -> FederatedData:
    """Load Fashion-MNIST as float32 images in [0, 1] and int64 labels.

    Parameters
    ----------
    data_dir:
        Folder with the IDX files; see :func:`resolve_fashion_mnist_dir` for the
        search order when ``None`` (default).
    download:
        When the files are not found, download them (default ``False``) into
        ``data_dir``, else ``$FEDGE_DATA/fashion-mnist``, else the user cache.

    Returns
    -------
    FederatedData
        ``name="fashion_mnist"``, ``x`` of shape ``(N, 1, 28, 28)`` (60,000 train and
        10,000 test on the real data), 10 classes, no natural partition.

    Raises
    ------
    DataError
        If the files are missing (and ``download`` is off) or corrupt.
    """
    try:
        folder = resolve_fashion_mnist_dir(data_dir)
    except DataError:
        if not download:
            raise
        if data_dir is not None:
            target = Path(data_dir).expanduser()
        elif os.environ.get("FEDGE_DATA"):
            target = Path(os.environ["FEDGE_DATA"]).expanduser() / "fashion-mnist"
        else:
            target = _cache_dir()
        folder = download_fashion_mnist(target)
    return FederatedData(
        name="fashion_mnist",
        train=_load_split(folder, "train"),
        test=_load_split(folder, "t10k"),
        num_classes=_NUM_CLASSES,
    )


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch(url: str, final: Path, md5: str, timeout: float, progress: bool) -> None:
    try:
        import httpx
    except ImportError as exc:
        raise DataError("downloading needs httpx: `pip install httpx`") from exc

    fd, tmp_name = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        digest = hashlib.md5(usedforsecurity=False)
        with contextlib.ExitStack() as stack:
            out = stack.enter_context(os.fdopen(fd, "wb"))
            response = stack.enter_context(
                httpx.stream("GET", url, timeout=timeout, follow_redirects=True)
            )
            if not response.is_success:
                raise DataError(f"downloading {url} failed: HTTP {response.status_code}")
            bar = None
            if progress:
                from rich.progress import Progress

                bar = stack.enter_context(Progress())
                total = int(response.headers.get("content-length", 0)) or None
                task = bar.add_task(final.name, total=total)
            for chunk in response.iter_bytes(_CHUNK):
                out.write(chunk)
                digest.update(chunk)
                if bar is not None:
                    bar.advance(task, len(chunk))
        if digest.hexdigest() != md5:
            raise DataError(
                f"downloaded {url} has md5 {digest.hexdigest()}, expected {md5}; "
                "the file was discarded"
            )
        os.replace(tmp, final)
    except httpx.HTTPError as exc:
        raise DataError(f"downloading {url} failed: {exc}") from exc
    except OSError as exc:
        raise DataError(f"writing {final} failed: {exc.strerror or exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)


def download_fashion_mnist(
    dest: str | Path,
    *,
    base_url: str = FASHION_MNIST_URL,
    checksums: Mapping[str, str] | None = None,
    timeout: float = 60.0,
    progress: bool = False,
) -> Path:
    """Download the four gzipped Fashion-MNIST files into ``dest``.

    Each file streams into a temporary file in ``dest``, is checked against its md5
    and only then renamed into place, so an interrupted or wrong download leaves
    nothing behind. Files already present with the right checksum are skipped.

    Parameters
    ----------
    dest:
        Folder to write into; created if missing.
    base_url:
        URL the file names are appended to; default the official Zalando mirror.
    checksums:
        md5 hex digest per file name; default :data:`FASHION_MNIST_MD5`.
    timeout:
        Network timeout in seconds per request (default 60).
    progress:
        Show a rich progress bar per file (default ``False``).

    Returns
    -------
    Path
        ``dest``.

    Raises
    ------
    ConfigError
        If ``checksums`` lacks one of the four file names.
    DataError
        On an HTTP or network error or a checksum mismatch.
    """
    sums = dict(FASHION_MNIST_MD5 if checksums is None else checksums)
    missing = [name for name in FASHION_MNIST_MD5 if name not in sums]
    if missing:
        raise ConfigError(f"checksums has no entry for {', '.join(missing)}")
    folder = Path(dest).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create download folder {folder}: {exc.strerror}") from exc
    for name in FASHION_MNIST_MD5:
        final = folder / name
        md5 = sums[name].lower()
        if final.is_file() and _md5(final) == md5:
            continue
        _fetch(base_url.rstrip("/") + "/" + name, final, md5, timeout, progress)
    return folder
