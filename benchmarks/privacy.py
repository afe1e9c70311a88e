"""Privacy benchmark: (1) what SecAgg+ costs against plain FedAvg on the same cohort,
(2) test accuracy against the privacy budget ε on Fashion-MNIST.

    python benchmarks/privacy.py [--part cost|utility|all] [--flower]
        [--placements central distributed local]

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

``--placements`` (default ``central``) says who adds the noise, ``privacy.dp``; each
(population, ε, placement) is one run, at the same N, m, clipping norm 1, δ and recipe:

* ``central``: the server adds Gaussian noise to the clipped sum (the rows above);
  accounted with amplification by sampling m of N.
* ``distributed``: ``privacy.dp = "distributed"`` with ``[privacy.secure_aggregation]``:
  every round runs the real SecAgg+ protocol in process (k and t found for
  ``--secagg-dropout`` 0.3 and ``--secagg-corrupt`` 0.05, ``--modulus-bits`` 32); each
  client clips its delta, rounds it to integers and adds its share of Skellam noise, and
  the server only unmasks the noisy sum. No amplification by sampling, and the noise is
  planned for the fewest honest survivors (m − ⌊0.3m⌋ − ⌊0.05m⌋) while nobody drops here,
  so at the same ε it carries more noise than central: the ``noise σ`` column is the
  noise std per coordinate of the averaged update as the rounds report it (central and
  local: as planned, z/m and z/√m). ε = ∞ runs SecAgg+ without DP (``dp = "none"``: its
  quantization alone); ε = 0 runs it with z = 1e-9.
* ``local``: ``privacy.dp = "local"``: each client adds Gaussian noise to its own clipped
  delta; ε per client against everyone, without amplification. ε = ∞ is the same run as
  central's, so it is skipped when central is asked for too.

With any placement other than central alone the table gains a placement column, the
noise σ, seconds per round and, for distributed, what the rounds' ``secure_aggregation``
metrics say (k/t, the fewest clients summed, dropped clients and clipped values summed
over the rounds, aborted rounds); each JSON line also records z, the reached ε, the
planned noise std, seconds per round with and without the evaluation rounds.

Every placement runs on the vectorized engine: secure aggregation and distributed DP sit
on the aggregation path (the engine only trains), so they work with it unchanged. What
distributed costs is the aggregation, in one process: each client's clipping, rounding
and Skellam noise on 44,426 values and the protocol's masks and shares, several seconds
per round at m = 100 and about a minute at m = 1,000 on 2 busy cores, against well under
a second (m = 100) for central and local. Time a short ``--rounds`` run first.

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
#: Who adds part 2's noise (``privacy.dp``).
PLACEMENTS = ("central", "distributed", "local")
#: Part 2's clipping norm, every placement alike.
CLIP_NORM = 1.0


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


def _privacy(placement: str, epsilon: float, secagg: dict) -> dict | None:
    """The ``[privacy]`` section of one run: ``placement`` at budget ``epsilon``."""
    if not np.isfinite(epsilon):  # no DP; distributed keeps SecAgg+ (its quantization)
        return {"dp": "none", "secure_aggregation": secagg} if placement == "distributed" else None
    if epsilon == 0:  # the clipping without the noise (z = 1e-9: ε is meaningless)
        privacy = {"clip_norm": CLIP_NORM, "noise_multiplier": 1e-9, "delta": 1e-5}
    else:
        privacy = {"clip_norm": CLIP_NORM, "target_epsilon": epsilon, "delta": 1e-5}
    if placement == "central":  # today's rows: the default dp, as before
        return privacy
    if placement == "distributed":
        return {"dp": "distributed", **privacy, "secure_aggregation": secagg}
    return {"dp": "local", **privacy}


def _secagg_summary(history: list[dict]) -> dict | None:
    """What the rounds' ``secure_aggregation`` metrics say, over the run: k and t, the
    fewest clients summed, dropped and clipped values in all, aborted rounds, and the
    noise std per coordinate of the averaged update (distributed DP; mean over rounds)."""
    rounds = [m["secure_aggregation"] for m in history if "secure_aggregation" in m]
    if not rounds:
        return None
    done = [r for r in rounds if "aborted" not in r]
    summary: dict = {
        "rounds": len(rounds),
        "aborted": len(rounds) - len(done),
        "degree": sorted({r["degree"] for r in done}),
        "threshold": sorted({r["threshold"] for r in done}),
        "min_summed": min((r["summed"] for r in done), default=None),
        "dropped": sum(r["dropped"] for r in done),
        "clipped_values": sum(r["clipped_values"] for r in done),
    }
    noisy = [r for r in done if r.get("dp") == "distributed"]
    if noisy:
        summary["noise_std_of_sum"] = float(np.mean([r["noise_std"] for r in noisy]))
        summary["scale"] = noisy[-1]["scale"]
        summary["norm_bound"] = noisy[-1]["norm_bound"]
    return summary


def utility(
    clients: int,
    per_round: int,
    momentum: float,
    batch: int,
    epsilon: float,
    rounds: int,
    seed: int,
    placement: str = "central",
    secagg: dict | None = None,
) -> dict:
    """Test accuracy of DP-FedAvg for budget ``epsilon`` (``inf``: no DP) with the noise
    added by the server (``central``), the clients under SecAgg+ (``distributed``) or
    each client alone (``local``)."""
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
    privacy = _privacy(placement, epsilon, secagg or {})
    if privacy is not None:
        config["privacy"] = privacy
    fed = prepare(parse_config(config))
    z = fed.privacy.noise_multiplier if fed.privacy else 0.0
    row = {
        "clients": clients,
        "per_round": per_round,
        "placement": placement,
        "dp": "none" if privacy is None else privacy.get("dp", "central"),
        "engine": config["engine"],
        "epsilon": epsilon,
        "noise_multiplier": z,
        # per coordinate, of the update the server applies (distributed: as planned for
        # the fewest honest survivors; the rounds' actual noise is in secure_aggregation)
        "planned_noise_std_of_average": (
            None
            if fed.privacy is None
            else z * CLIP_NORM / (per_round**0.5 if placement == "local" else per_round)
        ),
    }
    start = time.perf_counter()
    try:
        result = run(fed)
    except FedgeError as exc:  # the noise made local training diverge
        return {
            **row,
            "reached_epsilon": None,
            "rounds": None,
            "test_accuracy": None,
            "mean_of_last_4_evaluations": None,
            "diverged": str(exc),
            "seconds": time.perf_counter() - start,
        }
    last = result.history[-1]
    evaluated = [m["test_accuracy"] for m in result.history if m["test_accuracy"] is not None]
    seconds = time.perf_counter() - start
    training = [m["seconds"] for m in result.history if m["test_accuracy"] is None]
    return {
        **row,
        "reached_epsilon": last.get("epsilon") if epsilon != 0 else None,
        "rounds": len(result.history),
        "test_accuracy": last["test_accuracy"],
        "mean_of_last_4_evaluations": float(np.mean(evaluated[-4:])),
        "secure_aggregation": _secagg_summary(result.history),
        "seconds": seconds,
        "seconds_per_round": seconds / len(result.history),
        # the rounds that did not evaluate (every 5th does, and the last)
        "seconds_per_round_without_evaluation": float(np.mean(training)) if training else None,
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
    p.add_argument(
        "--placements",
        nargs="+",
        choices=PLACEMENTS,
        default=["central"],
        help="who adds the DP noise: the server, the clients under SecAgg+, each client",
    )
    p.add_argument(
        "--secagg-dropout",
        type=float,
        default=0.3,
        help="distributed: dropouts SecAgg+ tolerates (the noise is planned for the rest)",
    )
    p.add_argument(
        "--secagg-corrupt",
        type=float,
        default=0.05,
        help="distributed: fraction of colluding clients, whose noise is not counted",
    )
    p.add_argument("--modulus-bits", type=int, default=32, help="distributed: SecAgg+ modulus")
    p.add_argument("--out", type=Path, default=Path("privacy.jsonl"))
    args = p.parse_args()
    if args.part in ("cost", "all"):
        torch.set_num_threads(1)
        cost_table(args)
        torch.set_num_threads(2)
    if args.part in ("utility", "all"):
        utility_table(args)


def utility_table(args: argparse.Namespace) -> None:
    wide = args.placements != ["central"]  # today's table, unchanged, for central alone
    secagg = {
        "dropout": args.secagg_dropout,
        "corrupt": args.secagg_corrupt,
        "modulus_bits": args.modulus_bits,
    }
    print(
        f"{'N':>6} {'m':>5} "
        + (f"{'placement':>11} " if wide else "")
        + f"{'ε':>5} {'z':>7} {'reached ε':>9} "
        + (f"{'noise σ':>8} " if wide else "")
        + f"{'last':>8} {'last 4':>8} {'seconds':>7}"
        + (f" {'s/round':>7}  secure aggregation" if wide else "")
    )
    for population in args.populations:
        clients, per_round, momentum, batch = population.split(":")
        for epsilon in args.epsilons:
            for placement in args.placements:
                if (
                    not np.isfinite(epsilon)
                    and placement == "local"
                    and "central" in args.placements
                ):
                    continue  # no DP: the same run as central's
                row = utility(
                    int(clients),
                    int(per_round),
                    float(momentum),
                    int(batch),
                    epsilon,
                    args.rounds,
                    args.seed,
                    placement,
                    secagg,
                )
                print(_utility_line(row, wide), flush=True)
                with args.out.open("a") as f:
                    f.write(json.dumps({"part": "utility", **row}) + "\n")


def _utility_line(row: dict, wide: bool) -> str:
    """One printed row of part 2; ``wide`` adds the placement, the noise std of the
    averaged update, seconds per round and the secure aggregation summary."""
    reached = row["reached_epsilon"]
    accuracy, mean = row["test_accuracy"], row["mean_of_last_4_evaluations"]
    sigma = _actual_noise_std(row)
    line = (
        f"{row['clients']:>6} {row['per_round']:>5} "
        + (f"{row['placement']:>11} " if wide else "")
        + f"{row['epsilon']:>5g} {row['noise_multiplier']:>7.3f} "
        + (  # no ledger: ∞ (no DP) or nothing reached (a diverged run)
            f"{'—':>9} "
            if reached is None and accuracy is None
            else f"{reached if reached is not None else float('inf'):>9.3f} "
        )
        + (f"{'—' if sigma is None else f'{sigma:.4f}':>8} " if wide else "")
        + f"{'diverged' if accuracy is None else f'{accuracy:.2%}':>8} "
        f"{'' if mean is None else f'{mean:.2%}':>8} {row['seconds']:>7.0f}"
    )
    if not wide:
        return line
    per_round = row.get("seconds_per_round")
    line += f" {'' if per_round is None else f'{per_round:.2f}':>7}"
    sa = row.get("secure_aggregation")
    if sa and sa["aborted"] == sa["rounds"]:
        line += f"  all {sa['rounds']} rounds aborted"
    elif sa:
        line += (
            f"  k {'/'.join(map(str, sa['degree']))} t {'/'.join(map(str, sa['threshold']))}, "
            f"≥{sa['min_summed']} summed, {sa['dropped']} dropped, "
            f"{sa['clipped_values']} clipped, {sa['aborted']} aborted"
        )
    return line


def _actual_noise_std(row: dict) -> float | None:
    """The noise std per coordinate of the averaged update: distributed DP's as the
    rounds report it (more survivors than planned for add more), else as planned."""
    sa = row.get("secure_aggregation")
    if sa and "noise_std_of_sum" in sa:
        return sa["noise_std_of_sum"] / row["per_round"]
    return row["planned_noise_std_of_average"]


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
