"""Object detection on synthetic canvases: the CenterNet preset trained in plain PyTorch,
then served by ``fedge serve``.

Canvases of 96×96 pixels hold 1–4 Fashion-MNIST items at random positions and scales
(:mod:`fedge.data.canvases`): ``--train`` canvases of training-split items, ``--test``
held-out canvases of test-split items. The ``centernet`` preset (``preset_spec("centernet",
(1, 96, 96), 10)``, ~126k weights, output stride 4) trains with
:func:`fedge.tasks.detection_train.train_detector` for ``--epochs`` epochs or until
``--max-minutes`` of training time, whichever comes first (the learning rate anneals
over whichever runs out first, so a run cut by the clock still ends annealed); the
held-out canvases are evaluated with pycocotools (COCO mAP@[.5:.95] and mAP@.5). Target
(issue 20): mAP@.5 ≥ 0.75 within 15 minutes of training on the project's 2-core machine.
One torch thread by default: on this shared machine two threads collapsed to a tenth of
the one-thread speed while other work ran.

Serving (unless ``--no-serve``): the trained model is registered with its task in a
temporary folder store (``publish_model``, promoted to production) and a ``fedge serve``
process (loopback, ``--threads`` onnxruntime threads) serves it. One request carries
``--images-per-request`` held-out canvases. First the answers are checked: the documented
shape ``{"prediction": [[[class, score, xmin, ymin, xmax, ymax], ...], ...]}`` (one list
per image), and for four canvases the served rows of ``/predict`` and of the Open
Inference Protocol endpoint (``/v2/models/detector/infer``, ``detections`` output) equal
the PyTorch model's decoded rows to 1e-4. Then the load generator of
``benchmarks/serve.py`` (closed loop, in its own process) drives each endpoint at each
``--concurrency`` for ``--serve-seconds`` after ``--serve-warmup``, and reports
requests/s, images/s and p50/p99 latency. ``--endpoints png`` adds ``/predict`` with the
first image as a PNG body (``Content-Type: image/png``, the 8-bit pixels a camera gives;
checked first to get the JSON answer of the same pixels / 255). The baseline, measured in
the same run: plain
PyTorch forward + decode of the same canvases in this process, no HTTP, at a batch of
concurrency × images per request (by default 1 and 32; images/s and p50/p99 per call);
the ratio printed is served images/s over plain images/s at that batch. Server, load
generator and baseline share this machine's cores (the baseline runs alone): compare
numbers only within one run.

Centralized vs federated (``--federated``): after the centralized run, the same canvases
(same seed, same held-out set: checked by fingerprint) are split among ``--clients``
clients by a Dirichlet(``--beta``) partition of each canvas's dominant class, and FedAvg
trains the same preset with ``fedge simulate``'s sequential engine: full participation,
``--local-epochs`` epochs of local SGD (momentum 0.9, ``--fed-lr``, batch ``--fed-batch-size``,
weight decay ``--weight-decay``, no flips, constant rate) per round, for ``--epochs /
--local-epochs`` rounds, so both see the data the same number of epochs. Its training
time excludes the evaluations, as the centralized one does.

``--save-checkpoint`` writes the trained weights (safetensors); ``--load-checkpoint``
skips training, evaluates those weights on the held-out canvases and goes on to serving.

Usage::

    python benchmarks/detection.py                          # the full run (≤ 15 min + ~1 min)
    python benchmarks/detection.py --train 2000 --epochs 3  # a smoke test
    python benchmarks/detection.py --write-coco /tmp/canvases   # also write the data
    python benchmarks/detection.py --federated              # and FedAvg at equal epochs
    python benchmarks/detection.py --train 300 --test 50 --epochs 1 --no-serve \\
        --save-checkpoint /tmp/det.safetensors              # train briefly, keep the weights
    python benchmarks/detection.py --test 50 --load-checkpoint /tmp/det.safetensors \\
        --serve-seconds 2                                   # serve those weights only

Prints one line per epoch, a summary line, then one line per serving case; ``--json``
writes the history and the serving numbers.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from serve import generate, server

from fedge.central import LocalStore, ModelRegistry, publish_model
from fedge.central.weights import load_model, params_from_bytes, params_to_bytes
from fedge.data.canvases import fashion_mnist_canvases
from fedge.data.detection import write_coco
from fedge.models.spec import ModelSpec, build_model, count_parameters, preset_spec
from fedge.tasks import Detection
from fedge.tasks.detection_train import DetectorTraining, train_detector

MODEL = "detector"
#: Decoding options of the correctness check: every peak above 0.05 (no cut by count, so
#: float differences between onnxruntime and PyTorch cannot swap rows at a cut-off).
CHECK_OPTIONS = {"score_threshold": 0.05, "max_detections": 1000}


@torch.no_grad()
def plain_torch(
    model: torch.nn.Module, task: Detection, x: torch.Tensor, batch: int, seconds: float
) -> dict[str, float]:
    """Forward + decode (the task's default options, as the server) of ``x`` tiled to
    ``batch`` images, repeated for ``seconds`` after one unmeasured call."""
    xb = x.repeat(-(-batch // len(x)), 1, 1, 1)[:batch].contiguous()
    task.decode(model(xb))
    calls: list[float] = []
    start = time.perf_counter()
    while (now := time.perf_counter()) - start < seconds:
        task.decode(model(xb))
        calls.append(time.perf_counter() - now)
    ms = np.array(calls) * 1000
    return {
        "images_per_s": len(calls) * batch / (time.perf_counter() - start),
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
    }


def v2_body(x: torch.Tensor, **parameters: Any) -> dict[str, Any]:
    """An Open Inference Protocol request for the ``detections`` output of ``x``."""
    tensor = {"name": "input", "shape": list(x.shape), "datatype": "FP32"}
    body = {"inputs": [tensor | {"data": x.numpy().tolist()}]}
    return body | {"outputs": [{"name": "detections"}], "parameters": parameters}


def _sorted_rows(rows: Any) -> np.ndarray:
    """Rows ordered by class, corners, then score (rounded keys), so two decodings that
    order tied scores differently still compare row by row."""
    rows = np.asarray(rows, dtype=np.float64).reshape(-1, 6)
    return rows[np.lexsort(np.round(rows[:, [1, 5, 4, 3, 2, 0]], 3).T)]


def _compare(served: list[Any], wanted: list[np.ndarray]) -> float:
    """Largest difference between served and wanted rows per image (inf if the counts
    differ or a class index does)."""
    worst = 0.0
    for rows, want in zip(served, wanted, strict=True):
        a, b = _sorted_rows(rows), _sorted_rows(want)
        if a.shape != b.shape or not np.array_equal(a[:, 0], b[:, 0]):
            return float("inf")
        worst = max(worst, float(np.abs(a - b).max(initial=0.0)))
    return worst


def _documented_shape(prediction: Any, images: int) -> bool:
    """``[[[class, score, xmin, ymin, xmax, ymax], ...], ...]``: one list per image."""
    return (
        isinstance(prediction, list)
        and len(prediction) == images
        and all(
            isinstance(rows, list)
            and all(
                isinstance(r, list)
                and len(r) == 6
                and isinstance(r[0], int)
                and all(isinstance(v, float | int) for v in r[1:])
                for r in rows
            )
            for rows in prediction
        )
    )


def check_answers(
    url: str,
    model: torch.nn.Module,
    task: Detection,
    x: torch.Tensor,
    load_body: bytes,
    images: int,
) -> dict[str, Any]:
    """The load body's answer has the documented shape; ``/predict`` and v2 give the
    PyTorch model's decoded rows for the canvases ``x`` (to 1e-4)."""
    with torch.no_grad():
        wanted = [r.numpy() for r in task.decode(model(x), **CHECK_OPTIONS)]
    headers = {"content-type": "application/json"}
    plain = httpx.post(f"{url}/predict", content=load_body, headers=headers, timeout=60).json()
    body = {"instances": x.numpy().tolist(), **CHECK_OPTIONS}
    predict = httpx.post(f"{url}/predict", json=body, timeout=60).json()["prediction"]
    v2 = httpx.post(
        f"{url}/v2/models/{MODEL}/infer", json=v2_body(x, **CHECK_OPTIONS), timeout=60
    ).json()
    out = v2["outputs"][0]
    rows = np.reshape(out["data"], out["shape"]).reshape(-1, 7)
    v2_rows = [rows[rows[:, 0] == i, 1:] for i in range(len(x))]
    result = {
        "shape_ok": _documented_shape(plain.get("prediction"), images)
        and _documented_shape(predict, len(x)),
        "rows_compared": sum(len(w) for w in wanted),
        "predict_max_abs_diff": _compare(predict, wanted),
        "v2_max_abs_diff": _compare(v2_rows, wanted),
    }
    result["ok"] = bool(
        result["shape_ok"]
        and max(result["predict_max_abs_diff"], result["v2_max_abs_diff"]) <= 1e-4
    )
    return result


JSON = "application/json"


def png_body(x: torch.Tensor) -> bytes:
    """The first image of ``x`` as the PNG file a device would post (8-bit, rounded)."""
    from PIL import Image

    pixels = np.round(x[0].numpy() * 255).astype(np.uint8)
    mode = {1: "L", 3: "RGB"}[pixels.shape[0]]
    out = io.BytesIO()
    Image.fromarray(pixels[0] if mode == "L" else pixels.transpose(1, 2, 0), mode).save(out, "PNG")
    return out.getvalue()


def png_equals_json(url: str, x: torch.Tensor) -> bool:
    """The PNG body's answer is the JSON answer for the same 8-bit pixels / 255."""
    pixels = np.round(x[:1].numpy() * 255).astype(np.float32) / 255
    wanted = httpx.post(
        f"{url}/predict", json={"model": MODEL, "instances": pixels.tolist()}, timeout=60
    ).json()
    got = httpx.post(
        f"{url}/predict?model={MODEL}",
        content=png_body(x),
        headers={"Content-Type": "image/png"},
        timeout=60,
    ).json()
    return got == wanted


def serve_benchmark(
    args: argparse.Namespace,
    spec: ModelSpec,
    task: Detection,
    params: dict[str, torch.Tensor],
    x_test: torch.Tensor,
    metrics: dict[str, Any],
) -> dict[str, Any]:
    """Register, serve, check and load the model (see the module docstring)."""
    model = load_model(spec, params)
    x = x_test[: args.images_per_request]
    baseline = {}
    for batch in sorted({c * len(x) for c in args.concurrency}):
        r = plain_torch(model, task, x, batch, args.serve_seconds)
        baseline[batch] = r
        print(
            f"plain PyTorch batch {batch:3d}: {r['images_per_s']:8.1f} images/s  "
            f"p50 {r['p50_ms']:7.2f} ms  p99 {r['p99_ms']:7.2f} ms per call",
            flush=True,
        )
    bodies: dict[str, tuple[str, bytes, str]] = {
        "predict": ("/predict", json.dumps({"instances": x.numpy().tolist()}).encode(), JSON),
        "v2": (f"/v2/models/{MODEL}/infer", json.dumps(v2_body(x)).encode(), JSON),
        "png": (f"/predict?model={MODEL}", png_body(x), "image/png"),
    }
    results: dict[str, Any] = {"baseline": baseline}
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        registry = ModelRegistry(LocalStore(store))
        version = publish_model(registry, MODEL, spec, params, metrics=metrics, task=task.to_dict())
        registry.promote(MODEL, version.version)
        cmd = [sys.executable, "-m", "fedge", "serve", "--store", str(store), "--port", "0"]
        cmd += ["--max-delay-ms", str(args.max_delay_ms)]
        cmd += ["--threads", str(args.threads or os.cpu_count())]
        with server(cmd, "/v2/health/ready", Path(tmp) / "serve.log") as url:
            load_body = bodies["predict"][1]
            check = check_answers(url, model, task, x_test[:4], load_body, len(x))
            if "png" in args.endpoints:
                check["png_equals_json"] = png_equals_json(url, x)
            results["check"] = check
            print(
                f"check: documented shape {'yes' if check['shape_ok'] else 'NO'}; "
                f"{check['rows_compared']} rows of 4 canvases vs PyTorch: /predict max diff "
                f"{check['predict_max_abs_diff']:.2g}, v2 {check['v2_max_abs_diff']:.2g} "
                f"({'ok' if check['ok'] else 'MISMATCH'}, tolerance 1e-4)",
                flush=True,
            )
            if "png_equals_json" in check:
                same = "yes" if check["png_equals_json"] else "NO"
                print(f"check: PNG body answers as JSON of the same pixels: {same}", flush=True)
            for endpoint in args.endpoints:
                path, data, media = bodies[endpoint]
                for c in args.concurrency:
                    r = generate(url, data, c, args.serve_seconds, args.serve_warmup, path, media)
                    r["images_per_s"] = r["requests_per_s"] * len(x)
                    results.setdefault(endpoint, {})[c] = r
                    batch = c * len(x)
                    r["vs_plain_torch"] = r["images_per_s"] / baseline[batch]["images_per_s"]
                    print(
                        f"serve {endpoint:7s} concurrency {c:3d}: "
                        f"{r['requests_per_s']:8.1f} req/s  {r['images_per_s']:8.1f} images/s  "
                        f"p50 {r['p50_ms']:7.2f} ms  p99 {r['p99_ms']:7.2f} ms  "
                        f"failures {r['failures']}  "
                        f"served / plain PyTorch batch {batch} = "
                        f"{r['vs_plain_torch']:.2f}x",
                        flush=True,
                    )
    return results


def federated(args: argparse.Namespace, test: Any) -> dict[str, Any]:
    """FedAvg on the same canvases at the same number of epochs (see the docstring)."""
    from fedge.config import parse_config
    from fedge.sim.experiment import prepare, run
    from fedge.traffic import fingerprint_test_set

    if args.epochs % args.local_epochs:
        sys.exit("--epochs must be a multiple of --local-epochs")
    rounds = args.epochs // args.local_epochs
    config = parse_config(
        {
            "name": "detection-fedavg",
            "seed": args.seed,
            "rounds": rounds,
            "engine": "sequential",
            "threads": args.threads or torch.get_num_threads(),
            "data": {"name": "canvases", "num_train": args.train, "num_test": args.test},
            "partition": {"scheme": "dirichlet", "num_clients": args.clients, "beta": args.beta},
            "model": {"preset": "centernet"},
            "client": {
                "epochs": args.local_epochs,
                "batch_size": args.fed_batch_size,
                "lr": args.fed_lr,
                "momentum": 0.9,
                "weight_decay": args.weight_decay,
            },
            "eval": {"every": max(1, rounds // 4)},
        }
    )
    fed = prepare(config)
    same = fingerprint_test_set(fed.data.test.x, fed.data.test.y) == fingerprint_test_set(
        test.x, test.y
    )
    if not same:
        sys.exit("the federated run's held-out canvases differ from the centralized run's")
    sizes = fed.clients.sizes()
    print(
        f"federated: {args.clients} clients (Dirichlet β={args.beta} by dominant class, "
        f"{sizes.min()}-{sizes.max()} canvases), {rounds} rounds × {args.local_epochs} local "
        f"epochs, SGD lr {args.fed_lr:g} momentum 0.9 batch {args.fed_batch_size}",
        flush=True,
    )
    evaluating = 0.0

    def show(m: dict[str, Any]) -> None:
        if m["test_map50"] is not None:
            print(
                f"round {m['round']:3d}  train loss {m['train_loss']:.3f}  test loss "
                f"{m['test_loss']:.3f}  mAP@.5 {m['test_map50']:.3f}  "
                f"mAP@[.5:.95] {m['test_map']:.3f}",
                flush=True,
            )

    t0 = time.perf_counter()
    result = run(fed, on_round=show)
    wall = time.perf_counter() - t0
    # Evaluation time: the rounds' seconds minus their training part.
    for m in result.history:
        if m["test_map50"] is not None:
            evaluating += m["seconds"] - m["examples"] / max(m["samples_per_second"], 1e-9)
    train_seconds = wall - evaluating
    last = result.history[-1]
    images = sum(m["examples"] for m in result.history)
    print(
        f"fedavg  train {len(fed.data.train)}  test {len(fed.data.test)}  epochs {args.epochs}  "
        f"train {train_seconds:.0f} s ({images / train_seconds:.0f} images/s)  "
        f"mAP@.5 {last['test_map50']:.3f}  mAP@[.5:.95] {last['test_map']:.3f}",
        flush=True,
    )
    return {"history": result.history, "train_seconds": train_seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=int, default=8000, help="training canvases")
    parser.add_argument("--test", type=int, default=500, help="held-out canvases")
    parser.add_argument("--epochs", type=int, default=24)
    parser.add_argument("--max-minutes", type=float, default=15.0, help="training time cap")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--optimizer", choices=["adam", "sgd"], default="adam")
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--warmup-steps", type=int, default=100)
    parser.add_argument("--no-flip", action="store_true", help="no left-right flips")
    parser.add_argument("--eval-every", type=int, default=2, help="epochs between evaluations")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (default 1: see the docstring)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write-coco", type=Path, help="write the canvases here (COCO)")
    parser.add_argument("--save-checkpoint", type=Path, help="write the weights (safetensors)")
    parser.add_argument(
        "--load-checkpoint", type=Path, help="serve these weights (safetensors), no training"
    )
    parser.add_argument("--no-serve", action="store_true", help="skip the serving benchmark")
    parser.add_argument("--serve-seconds", type=float, default=10.0, help="measured per case")
    parser.add_argument("--serve-warmup", type=float, default=1.0, help="unmeasured per case")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument(
        "--endpoints", nargs="+", choices=["predict", "v2", "png"], default=["predict", "v2"]
    )
    parser.add_argument("--images-per-request", type=int, default=1)
    parser.add_argument("--max-delay-ms", type=float, default=2.0, help="fedge serve batching")
    parser.add_argument("--json", type=Path, help="write the history and serving numbers here")
    parser.add_argument(
        "--federated", action="store_true", help="also train FedAvg at equal epochs"
    )
    parser.add_argument("--clients", type=int, default=10, help="federated clients")
    parser.add_argument("--beta", type=float, default=0.5, help="Dirichlet concentration")
    parser.add_argument("--local-epochs", type=int, default=2, help="local epochs per round")
    parser.add_argument("--fed-lr", type=float, default=0.02, help="local SGD learning rate")
    parser.add_argument("--fed-batch-size", type=int, default=8, help="local batch size")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.no_serve and not (args.test >= 4 and 1 <= args.images_per_request <= args.test):
        parser.error("serving needs --test >= 4 and 1 <= --images-per-request <= --test")

    t0 = time.perf_counter()
    num_train = 0 if args.load_checkpoint else args.train
    train, test = fashion_mnist_canvases(num_train, args.test, seed=args.seed)
    data_seconds = time.perf_counter() - t0
    if args.write_coco:
        write_coco(train, args.write_coco / "train")
        write_coco(test, args.write_coco / "test")
    objects = int((train.y[..., 0] >= 0).sum())
    print(
        f"data: {len(train)} train canvases ({objects} items), {len(test)} held-out, "
        f"made in {data_seconds:.1f} s"
    )
    spec = preset_spec("centernet", test.input_shape, test.num_classes)
    task = Detection.from_spec(spec)
    weights = f"centernet ({count_parameters(build_model(spec)):,} weights)"
    report: dict[str, Any] = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "machine": platform.platform(),
    }
    if args.load_checkpoint:
        params = params_from_bytes(args.load_checkpoint.read_bytes())
        evaluation = task.evaluate(load_model(spec, params), test.x, test.y)
        final = {f"test_{k}": v for k, v in evaluation.items()}
        print(
            f"{weights} from {args.load_checkpoint}  test {len(test)}  "
            f"mAP@.5 {final['test_map50']:.3f}  mAP@[.5:.95] {final['test_map']:.3f}"
        )
        report["evaluation"] = final
    else:
        config = DetectorTraining(
            epochs=args.epochs,
            batch_size=args.batch_size,
            optimizer=args.optimizer,
            lr=args.lr,
            weight_decay=args.weight_decay,
            warmup_steps=args.warmup_steps,
            flip=not args.no_flip,
            max_seconds=args.max_minutes * 60,
            eval_every=args.eval_every,
            seed=args.seed,
        )

        def show(m: dict) -> None:
            evaluated = (
                f"  test loss {m['test_loss']:.3f}  mAP@.5 {m['test_map50']:.3f}  "
                f"mAP@[.5:.95] {m['test_map']:.3f}"
                if "test_map" in m
                else ""
            )
            print(
                f"epoch {m['epoch']:3d}  train loss {m['train_loss']:.3f}  "
                f"{m['train_seconds']:7.1f} s{evaluated}",
                flush=True,
            )

        result = train_detector(spec, task, train, test, config, log=show)
        params, final = result.params, result.final
        images = final["steps"] * args.batch_size
        print(
            f"{weights}  train {len(train)}  test {len(test)}  epochs {final['epoch']}  "
            f"{args.optimizer} lr {args.lr:g}  batch {args.batch_size}  "
            f"threads {torch.get_num_threads()}  train {result.train_seconds:.0f} s "
            f"({images / result.train_seconds:.0f} images/s)  "
            f"mAP@.5 {final['test_map50']:.3f}  mAP@[.5:.95] {final['test_map']:.3f}"
        )
        report |= {"history": result.history, "train_seconds": result.train_seconds}
        if args.save_checkpoint:
            args.save_checkpoint.write_bytes(params_to_bytes(params))
            print(f"weights written to {args.save_checkpoint}")
    if args.federated:
        report["federated"] = federated(args, test)
    if not args.no_serve:
        metrics = {k: final[k] for k in ("test_map50", "test_map")}
        report["serve"] = serve_benchmark(args, spec, task, params, test.x, metrics)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    if "serve" in report and not report["serve"]["check"]["ok"]:
        sys.exit("the served answers do not match the PyTorch model (see check above)")


if __name__ == "__main__":
    main()
