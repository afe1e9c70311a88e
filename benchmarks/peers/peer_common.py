"""What every runner of ``benchmarks/vs_peers.py`` shares: the job file, Fashion-MNIST,
the CNN and one client's local SGD.

This module runs inside the peers' virtual environments, so it imports only the standard
library, numpy and torch (never fedge). A job is a JSON file written by vs_peers.py::

    {"framework": ..., "seed": 0, "rounds": 20, "epochs": 1, "batch_size": 10,
     "lr": 0.1, "momentum": 0.0, "threads": null, "arrays": "job.npz", "out": "out.json"}

``arrays`` holds the clients' row indices (``rows`` cut at ``offsets``), the cohort of
every round (``schedule``, rounds × K, drawn with fedge's ``sample_clients``) and the
initial global weights ``p0 .. p9`` (fedge's ``build_model(spec, seed)``), so that every
framework trains the same clients on the same data from the same start. Each runner
writes ``out`` (JSON: ``round_seconds`` and its framework's version) and ``out``'s
``.npz`` sibling with the final global weights, in the same order.
"""

from __future__ import annotations

import gzip
import itertools
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

DATA_DIR = Path("/usr/share/datasets/fashion-mnist")


def load_job(path: str) -> dict[str, Any]:
    """The job's settings with its arrays: ``partition`` (list of index arrays),
    ``schedule`` (rounds × K int array) and ``init`` (list of float32 arrays)."""
    job = json.loads(Path(path).read_text())
    with np.load(job["arrays"]) as arrays:
        rows, offsets = arrays["rows"], arrays["offsets"]
        job["partition"] = [rows[a:b] for a, b in itertools.pairwise(offsets)]
        job["schedule"] = arrays["schedule"]
        job["init"] = [arrays[f"p{i}"] for i in range(len(arrays.files) - 3)]
    return job


def write_result(job: dict[str, Any], round_seconds: list[float], params, **extra) -> None:
    """``out`` (JSON) and its ``.npz`` sibling with the final weights ``p0 ..``."""
    out = Path(job["out"])
    arrays = {f"p{i}": np.asarray(p, dtype=np.float32) for i, p in enumerate(params)}
    np.savez(out.with_suffix(".npz"), **arrays)
    out.write_text(json.dumps({"round_seconds": round_seconds, **extra}))


def read_idx(path: Path) -> np.ndarray:
    """One unsigned-byte IDX file (gzipped or raw) as a uint8 array."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(np.int64)
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def find(stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (DATA_DIR / name).is_file():
            return DATA_DIR / name
    sys.exit(f"error: {DATA_DIR} lacks {stem}(.gz)")


def load_train() -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST's training set as fedge holds it: float32 images in [0, 1] of shape
    (N, 1, 28, 28) (``x / 255``, 188 MB) and int64 labels."""
    x = read_idx(find("train-images-idx3-ubyte")).reshape(-1, 1, 28, 28).astype(np.float32)
    x /= 255.0
    y = read_idx(find("train-labels-idx1-ubyte")).astype(np.int64)
    return torch.from_numpy(x), torch.from_numpy(y)


def client_tensors(
    x: torch.Tensor, y: torch.Tensor, rows: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor]:
    """One client's examples (a copy of its rows)."""
    idx = torch.from_numpy(np.asarray(rows, dtype=np.int64))
    return x[idx], y[idx]


class LeNet(torch.nn.Sequential):
    """NIID-Bench's CNN: conv 6@5×5, ReLU, pool 2, conv 16@5×5, ReLU, pool 2, dense 120,
    ReLU, dense 84, ReLU, dense 10 (fedge's ``lenet`` preset, same parameter order).
    ``loss`` and ``metrics`` are what pfl's ``PyTorchModel`` asks of a module."""

    def __init__(self) -> None:
        super().__init__(
            torch.nn.Conv2d(1, 6, 5),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(6, 16, 5),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
            torch.nn.Flatten(),
            torch.nn.Linear(256, 120),
            torch.nn.ReLU(),
            torch.nn.Linear(120, 84),
            torch.nn.ReLU(),
            torch.nn.Linear(84, 10),
        )

    def loss(self, x: torch.Tensor, y: torch.Tensor, eval: bool = False) -> torch.Tensor:
        self.eval() if eval else self.train()
        return F.cross_entropy(self(x), y)

    def metrics(self, x: torch.Tensor, y: torch.Tensor, eval: bool = False) -> dict:
        from pfl.metrics import Weighted  # only pfl calls this

        self.eval() if eval else self.train()
        with torch.no_grad():
            logits = self(x)
            loss = F.cross_entropy(logits, y, reduction="sum").item()
            correct = (logits.argmax(1) == y).sum().item()
        return {"loss": Weighted(loss, len(y)), "accuracy": Weighted(correct, len(y))}


def set_weights(model: torch.nn.Module, arrays) -> None:
    """Copy ``arrays`` (in parameter order) into ``model``."""
    with torch.no_grad():
        for p, a in zip(model.parameters(), arrays, strict=True):
            p.copy_(torch.as_tensor(np.asarray(a)))


def get_weights(model: torch.nn.Module) -> list[np.ndarray]:
    return [p.detach().numpy().copy() for p in model.parameters()]


def client_generator(seed: int, round: int, client: int) -> torch.Generator:
    """The random stream of one client in one round, derived as fedge derives it
    (``fedge.fl.local.client_generator``), so that every framework draws the same
    batches."""
    state = np.random.SeedSequence([seed, round, client, 0x10CA1]).generate_state(2)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def shuffled(
    x: torch.Tensor, y: torch.Tensor, seed: int, round: int, client: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The client's examples in the order of its first epoch (fedge's permutation)."""
    order = torch.randperm(len(y), generator=client_generator(seed, round, client))
    return x[order], y[order]


def train_local(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float,
    seed: int,
    round: int,
    client: int,
) -> None:
    """A textbook local-SGD loop: each epoch a fresh permutation from the client's stream,
    consecutive batches (the last one smaller), mean cross-entropy, ``torch.optim.SGD``
    with a momentum buffer that starts at zero every round."""
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    gen = client_generator(seed, round, client)
    n = len(y)
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()


def set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)
