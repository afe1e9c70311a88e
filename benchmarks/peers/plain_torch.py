"""The hardware's limit for ``benchmarks/vs_peers.py``: a textbook single-process PyTorch
loop training the same CNN on Fashion-MNIST, one client's worth of data at a time.

    python benchmarks/peers/plain_torch.py OUT.json SECONDS THREADS BATCH [BATCH ...]

THREADS 0 keeps torch's default. For each batch size: SGD (lr 0.01, momentum 0.9) over
the first 6,000 training images in consecutive batches for about SECONDS seconds, after
one warm-up pass; OUT.json maps the batch size to training examples per second.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import peer_common as pc
import torch
import torch.nn.functional as F


def throughput(x: torch.Tensor, y: torch.Tensor, batch: int, seconds: float) -> float:
    model = pc.LeNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    n = len(y)

    def one_pass() -> int:
        for i in range(0, n, batch):
            opt.zero_grad()
            F.cross_entropy(model(x[i : i + batch]), y[i : i + batch]).backward()
            opt.step()
        return n

    one_pass()
    seen, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        seen += one_pass()
    return seen / (time.perf_counter() - start)


def main() -> None:
    out, seconds, threads = Path(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
    pc.set_threads(threads or None)
    x, y = pc.load_train()
    x, y = pc.client_tensors(x, y, range(6000))
    rates = {int(b): throughput(x, y, int(b), seconds) for b in sys.argv[4:]}
    out.write_text(json.dumps({"samples_per_second": rates, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
