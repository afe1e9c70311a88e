"""Privacy benchmark: (1) what SecAgg+ costs against plain FedAvg on the same cohort,
(2) test accuracy against the privacy budget ε on Fashion-MNIST.

    python benchmarks/privacy.py [--part cost|utility|all] [--flower]

Part 1 (``--clients 100 500 1000 --dropouts 0 0.3``):

For each cohort size n and dropout fraction, one round with the LeNet CNN's 44,426
parameters (``--params``) per client:

* fedge SecAgg+ (:func:`fedge.privacy.secagg.run_in_process`, the real protocol with the
  parameters :func:`~fedge.privacy.secagg.find_parameters` picks for 30 % dropouts and 5 %
  corrupt clients; 32-bit modulus): the clients that drop vanish after the key sharing,
  before sending their masked vectors. Bytes: every message a client sends or receives,
  payloads plus 16 bytes per client id (no HTTP framing); CPU: process time of each
  client's calls (mean over clients that finished) and of the server's.
* fedge plain FedAvg on the same cohort: each client's update encoded as the deployment
  server's safetensors upload (:func:`fedge.federation.wire.encode_update`), the server
  decoding and summing them; the same clients drop (they send nothing).
* with ``--flower``: Flower 1.42's SecAgg+ workflow and its plain round
  (``benchmarks/peers/flower_secagg.py`` in its own virtual environment; see its
  docstring for what it counts: serialized message bytes, ClientApp CPU, server CPU) with
  its graph (``num_shares`` = the smallest odd number >= 2 log2 n, t = k // 3: Flower's
  reconstruction cost grows with k², so fedge's larger k would take it many minutes),
  and fedge once more on Flower's graph (k = num_shares − 1: Flower counts the client
  itself) for a like-for-like row.

The expansion factor is bytes sent per surviving client over plain FedAvg's.

Part 2 (``--populations 1000:100:0:16 10000:1000:0:2 --epsilons 1 2 4 8 inf``):
DP-FedAvg in simulation (the vectorized engine) on Fashion-MNIST split i.i.d. over N
clients, m per round, ``--rounds`` rounds of one local epoch (lr 0.05, momentum 0.5; the
batch about a quarter of a client's examples: 16 of 60, 2 of 6) with the LeNet CNN,
deltas clipped to norm 1, and on the server FedAvg (or FedAvgM with server lr 1 and the
given momentum). Nothing is tuned per ε. For each
ε (δ = 1e-5) the noise multiplier z is calibrated so that all rounds fit the budget
(``privacy.target_epsilon``), ∞ meaning no DP. It prints test accuracy after the last
round, the mean over its last four evaluations (every 5 rounds: one run's last-round
accuracy swings by several points), and z. ``--epsilons 0`` runs the clipping alone
(deltas clipped to norm 1, averaged with DP-FedAvg's estimator, no noise).

Results are appended as JSON lines to ``--out``; run it alone (2 cores).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from fedge.errors import FedgeError
from fedge.federation.wire import decode_update, encode_update
from fedge.fl.types import ClientUpdate
from fedge.privacy.secagg import GraphParameters, RoundSetup, find_parameters, run_in_process
from fedge.privacy.secagg.encoding import Segment, VectorCodec

ROOT = Path(__file__).resolve().parent.parent
FLOWER = ROOT / "benchmarks" / "peers" / "flower_secagg.py"
FLOWER_PYTHON = Path.home() / ".cache" / "fedge-bench" / "venv-flower" / "bin" / "python"


def _vectors(n: int, length: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"client-{i:05d}": rng.uniform(-1, 1, length).astype(np.float32) for i in range(n)}


def _dropped(ids: list[str], fraction: float, seed: int) -> set[str]:
    rng = np.random.default_rng([seed, 1])
    count = round(fraction * len(ids))
    return {ids[i] for i in rng.choice(len(ids), size=count, replace=False)}


def fedge_secagg(
    n: int, dropout: float, length: int, seed: int, graph: GraphParameters | None = None
) -> dict:
    graph = graph or find_parameters(n, dropout=0.3, corrupt=0.05)
    codec = VectorCodec((Segment("delta", length, -1.0, 1.0),), bits=32, max_clients=n)
    vectors = _vectors(n, length, seed)
    rng = np.random.default_rng(seed)
    start = time.process_time()
    inputs = {
        c: codec.encode({"delta": torch.from_numpy(v)}, rng).values for c, v in vectors.items()
    }
    encode_cpu = (time.process_time() - start) / n
    gone = _dropped(sorted(vectors), dropout, seed)
    setup = RoundSetup(b"benchmark", graph.threshold, 32, length)
    wall = time.perf_counter()
    total, view, traffic = run_in_process(
        setup, inputs, degree=graph.degree, graph_seed=seed, drop_before={"masked": gone}
    )
    wall = time.perf_counter() - wall
    survivors = list(view.survivors)
    exact = np.sum([vectors[c].astype(np.float64) for c in survivors], axis=0)
    decoded = codec.decode(total, len(survivors))["delta"].numpy()
    error = float(np.abs(decoded - exact).max()) / len(survivors)  # of the mean, as Flower's
    return {
        "k": graph.degree,
        "t": graph.threshold,
        "survivors": len(survivors),
        "sent_per_client": float(np.mean([traffic.sent[c] for c in survivors])),
        "received_per_client": float(np.mean([traffic.received[c] for c in survivors])),
        "client_cpu_s": float(np.mean([traffic.client_cpu[c] for c in survivors])) + encode_cpu,
        "server_cpu_s": traffic.server_cpu,
        "wall_s": wall,
        "max_abs_error_of_mean": error,
    }


def fedge_plain(n: int, dropout: float, length: int, seed: int) -> dict:
    vectors = _vectors(n, length, seed)
    gone = _dropped(sorted(vectors), dropout, seed)
    sent, client_cpu = [], []
    total = np.zeros(length, dtype=np.float64)
    server_cpu = 0.0
    for c, v in vectors.items():
        if c in gone:
            continue
        start = time.process_time()
        update = ClientUpdate(c, {"w": torch.from_numpy(v)}, num_samples=1, num_steps=1)
        body = encode_update(update, round=1, model_version=0)
        client_cpu.append(time.process_time() - start)
        sent.append(len(body))
        start = time.process_time()
        decoded = decode_update(body, device=c)
        total += decoded.update.params["w"].numpy()
        server_cpu += time.process_time() - start
    return {
        "survivors": len(sent),
        "sent_per_client": float(np.mean(sent)),
        "client_cpu_s": float(np.mean(client_cpu)),
        "server_cpu_s": server_cpu,
    }


def flower(n: int, dropout: float, length: int, seed: int, tmp: Path) -> dict:
    out = tmp / f"flower-{n}-{dropout}.json"
    cmd = [
        str(FLOWER_PYTHON),
        str(FLOWER),
        "--clients",
        str(n),
        "--dropout",
        str(dropout),
        "--params",
        str(length),
        "--seed",
        str(seed),
        "--out",
        str(out),
    ]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"Flower's SecAgg+ run failed:\n{done.stderr[-3000:]}")
    return json.loads(out.read_text())


def utility(
    clients: int,
    per_round: int,
    momentum: float,
    batch: int,
    epsilon: float,
    rounds: int,
    seed: int,
) -> dict:
    """Test accuracy of DP-FedAvg for budget ``epsilon`` (``inf``: no DP)."""
    from fedge.config import parse_config
    from fedge.sim.experiment import prepare, run

    config = {
        "name": f"dp-utility-{clients}-{per_round}-{epsilon}",
        "seed": seed,
        "rounds": rounds,
        "engine": "vectorized",
        "data": {"name": "fashion_mnist"},
        "partition": {"scheme": "iid", "num_clients": clients},
        "model": {"preset": "lenet"},
        "client": {"epochs": 1, "batch_size": batch, "lr": 0.05, "momentum": 0.5},
        "server": {"clients_per_round": per_round},
        "strategy": (
            {"name": "fedavgm", "server_lr": 1.0, "server_momentum": momentum}
            if momentum
            else {"name": "fedavg"}
        ),
        "eval": {"every": 5},
    }
    if epsilon == 0:  # the clipping without the noise (z = 1e-9: ε is meaningless)
        config["privacy"] = {"clip_norm": 1.0, "noise_multiplier": 1e-9, "delta": 1e-5}
    elif np.isfinite(epsilon):
        config["privacy"] = {"clip_norm": 1.0, "target_epsilon": epsilon, "delta": 1e-5}
    fed = prepare(parse_config(config))
    start = time.perf_counter()
    try:
        result = run(fed)
    except FedgeError as exc:  # the noise made local training diverge
        return {
            "clients": clients,
            "per_round": per_round,
            "epsilon": epsilon,
            "reached_epsilon": None,
            "noise_multiplier": fed.privacy.noise_multiplier,
            "rounds": None,
            "test_accuracy": None,
            "diverged": str(exc),
            "seconds": time.perf_counter() - start,
        }
    last = result.history[-1]
    evaluated = [m["test_accuracy"] for m in result.history if m["test_accuracy"] is not None]
    return {
        "clients": clients,
        "per_round": per_round,
        "epsilon": epsilon,
        "reached_epsilon": last.get("epsilon") if epsilon != 0 else None,
        "noise_multiplier": fed.privacy.noise_multiplier if fed.privacy else 0.0,
        "rounds": len(result.history),
        "test_accuracy": last["test_accuracy"],
        "mean_of_last_4_evaluations": float(np.mean(evaluated[-4:])),
        "seconds": time.perf_counter() - start,
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--clients", type=int, nargs="+", default=[100, 500, 1000])
    p.add_argument("--dropouts", type=float, nargs="+", default=[0.0, 0.3])
    p.add_argument("--params", type=int, default=44426, help="values per client (LeNet: 44,426)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--flower", action="store_true", help="also run Flower's SecAgg+ workflow")
    p.add_argument("--part", choices=["cost", "utility", "all"], default="all")
    p.add_argument(
        "--populations",
        nargs="+",
        default=["1000:100:0:16", "10000:1000:0:2"],
        help="N:m:server momentum (0: FedAvg):local batch size",
    )
    p.add_argument("--epsilons", type=float, nargs="+", default=[1, 2, 4, 8, float("inf"), 0])
    p.add_argument("--rounds", type=int, default=100)
    p.add_argument("--out", type=Path, default=Path("privacy.jsonl"))
    args = p.parse_args()
    if args.part in ("cost", "all"):
        torch.set_num_threads(1)
        cost_table(args)
        torch.set_num_threads(2)
    if args.part in ("utility", "all"):
        utility_table(args)


def utility_table(args: argparse.Namespace) -> None:
    print(
        f"{'N':>6} {'m':>5} {'ε':>5} {'z':>7} {'reached ε':>9} {'last':>8} {'last 4':>8} "
        f"{'seconds':>7}"
    )
    for population in args.populations:
        clients, per_round, momentum, batch = population.split(":")
        for epsilon in args.epsilons:
            row = utility(
                int(clients),
                int(per_round),
                float(momentum),
                int(batch),
                epsilon,
                args.rounds,
                args.seed,
            )
            reached = row["reached_epsilon"]
            accuracy, mean = row["test_accuracy"], row["mean_of_last_4_evaluations"]
            print(
                f"{clients:>6} {per_round:>5} {epsilon:>5g} {row['noise_multiplier']:>7.3f} "
                f"{reached if reached is not None else float('inf'):>9.3f} "
                f"{'diverged' if accuracy is None else f'{accuracy:.2%}':>8} "
                f"{'' if mean is None else f'{mean:.2%}':>8} {row['seconds']:>7.0f}",
                flush=True,
            )
            with args.out.open("a") as f:
                f.write(json.dumps({"part": "utility", **row}) + "\n")


def cost_table(args: argparse.Namespace) -> None:
    header = (
        f"{'n':>5} {'drop':>5} {'k':>4} {'t':>3} | {'fedge sent/client':>17} {'×plain':>7} "
        f"{'client s':>8} {'server s':>8} {'mean err':>8}"
    )
    if args.flower:
        header += f" | {'flower sent':>11} {'×plain':>7} {'client s':>8} {'server s':>8}"
    print(header)
    for n in args.clients:
        for dropout in args.dropouts:
            row = {"n": n, "dropout": dropout, "params": args.params}
            row["fedge_secagg"] = fedge_secagg(n, dropout, args.params, args.seed)
            row["fedge_plain"] = fedge_plain(n, dropout, args.params, args.seed)
            sa, pl = row["fedge_secagg"], row["fedge_plain"]
            row["fedge_expansion"] = sa["sent_per_client"] / pl["sent_per_client"]
            line = (
                f"{n:>5} {dropout:>5.0%} {sa['k']:>4} {sa['t']:>3} | "
                f"{sa['sent_per_client'] / 1e3:>15.1f}kB {row['fedge_expansion']:>6.2f}× "
                f"{sa['client_cpu_s']:>8.3f} {sa['server_cpu_s']:>8.2f} "
                f"{sa['max_abs_error_of_mean']:>8.1e}"
            )
            if args.flower:
                fl = flower(n, dropout, args.params, args.seed, args.out.parent)
                config = fl["secaggplus_config"]
                k, t = config["num_shares"] - 1, config["reconstruction_threshold"]
                same = fedge_secagg(n, dropout, args.params, args.seed, GraphParameters(n, k, t))
                row["flower"], row["fedge_secagg_flower_graph"] = fl, same
                sent_ratio = same["sent_per_client"] / pl["sent_per_client"]
                line += (
                    f"\n{'':>5} {'':>5} {k:>4} {t:>3} | "
                    f"{same['sent_per_client'] / 1e3:>15.1f}kB {sent_ratio:>6.2f}× "
                    f"{same['client_cpu_s']:>8.3f} {same['server_cpu_s']:>8.2f} "
                    f"{same['max_abs_error_of_mean']:>8.1e} | {_flower_summary(fl)}"
                )
            print(line, flush=True)
            with args.out.open("a") as f:
                f.write(json.dumps({"part": "cost", **row}) + "\n")


def _flower_summary(result: dict) -> str:
    sa, pl = result["secaggplus"], result["plain"]
    expansion = sa["bytes_sent_per_client"] / pl["bytes_sent_per_client"]
    return (
        f"{sa['bytes_sent_per_client'] / 1e3:>9.1f}kB {expansion:>6.2f}× "
        f"{sa['client_cpu_seconds_per_client']:>8.3f} {sa['server_cpu_seconds']:>8.2f}"
        + ("" if sa["completed"] else " (failed)")
    )


if __name__ == "__main__":
    sys.exit(main())
