"""A browser device's share of a SecAgg+ round next to a Python device's, on this machine.

One device's side of one round for LeNet's 44,426 values (32-bit modulus), with k
neighbours and threshold t as ``find_parameters`` gives them for cohorts of 100 and 1,000
(30 % dropouts, 5 % corrupt: k = 26, t = 6 and k = 66, t = 23). The round is real: a
``SecAggServer`` in this process, k Python ``SecAggClient`` neighbours, and two measured
devices in the same cohort, the browser's (``web/src/secagg.js`` in headless Chromium, on
the page a real ``fedge server`` serves at ``/client``) and a Python one (the baseline).
Both do the same work on the same number of neighbours; the server's unmasked sum is
checked against the inputs before a round counts.

Per stage, the wall time of the device's calls: key generation and ``advertise``;
``share`` (k key agreements, Shamir shares of two secrets, k seals); ``masked`` (k share
openings, k + 1 mask expansions); ``confirm`` (k seals); ``unmask`` (k openings). The
browser's time is measured inside the page (``performance.now()``) and includes parsing
and validating the JSON messages; the Python device's is its method calls on parsed
messages. Quantization (``encode``) is timed apart. Median of ``--repeats`` rounds.

Usage::

    python benchmarks/browser_secagg.py                       # k = 26 and 66, 5 rounds each
    python benchmarks/browser_secagg.py --degrees 26 --repeats 2   # a smoke test
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from browser import ROOT, chromium, say, start_server  # benchmarks/browser.py, beside this

from fedge.privacy.secagg import RoundPlan, RoundSetup, SecAggClient, SecAggServer
from fedge.privacy.secagg.encoding import Segment, VectorCodec
from fedge.privacy.secagg.messages import (
    keys_from_json,
    neighbours_to_json,
    sealed_from_json,
    sealed_to_json,
    shares_from_json,
    view_to_json,
)
from fedge.privacy.secagg.params import GraphParameters

LENGTH = 44_426  # LeNet's parameters
THRESHOLDS = {26: 6, 66: 23}  # find_parameters(100 / 1,000, dropout 0.3, corrupt 0.05)
STAGES = ("advertise", "share", "masked", "confirm", "unmask")

# One stage of the page's device, timed in the page; `box` keeps the client between calls.
STAGE = """
const done = arguments[arguments.length - 1];
const [stage, input, valuesB64] = arguments;
(async () => {
  const sa = await import("/client/secagg.js");
  const box = (window.bench ??= {});
  const b64 = (s) => Uint8Array.from(atob(s), (c) => c.charCodeAt(0));
  // the values arrive as base64 here; on a device they are in memory: not timed
  const raw = valuesB64 === null ? null : b64(valuesB64);
  const t0 = performance.now();
  let out;
  if (stage === "advertise") {
    box.client = await sa.SecAggClient.create("b", sa.parsePlan(input));
    out = await box.client.advertise();
  } else if (stage === "encode") {
    const plan = sa.parsePlan(input);
    const parts = { v: new Float64Array(raw.buffer) };
    const t = performance.now();
    sa.encode(plan, parts);
    return { ms: performance.now() - t };
  } else if (stage === "masked") {
    const body = await box.client.masked(input, new Uint32Array(raw.buffer));
    return { ms: performance.now() - t0, out: sa.toB64(body) }; // the page posts the bytes
  } else out = await box.client[stage](input);
  return { ms: performance.now() - t0, out };
})().then(done, (e) => done({ error: String((e && e.stack) || e) }));
"""


def plan_for(degree: int, threshold: int, context: bytes) -> RoundPlan:
    clients = degree + 1
    codec = VectorCodec((Segment("v", LENGTH, -1.0, 1.0),), 32, clients)
    setup = RoundSetup(context, threshold, 32, LENGTH)
    return RoundPlan(
        setup, GraphParameters(clients, degree, threshold), codec, "uniform", None, None
    )


def one_round(browser, degree: int, threshold: int, index: int) -> dict[str, dict[str, float]]:
    """One round of k + 1 devices in which "b" (the browser) and "p0" (Python) are timed;
    → {stage: {"browser": ms, "python": ms}}."""
    plan = plan_for(degree, threshold, f"bench {degree} {index}".encode())
    setup = plan.setup
    cohort = ["b"] + [f"p{i}" for i in range(degree)]
    server = SecAggServer(setup, cohort, degree, graph_seed=index)
    rng = np.random.default_rng(index)
    inputs = {c: rng.integers(0, plan.codec.levels + 1, LENGTH).astype(np.uint32) for c in cohort}
    times: dict[str, dict[str, float]] = {s: {} for s in STAGES}

    def js(stage: str, payload: Any, values: np.ndarray | None = None) -> Any:
        arg = None if values is None else _b64(values.tobytes())
        out = browser.execute_async_script(STAGE, stage, payload, arg)
        if "error" in out:
            raise RuntimeError(f"{stage} in the browser: {out['error']}")
        times[stage]["browser"] = out["ms"]
        return out["out"]

    def timed(stage: str, call):
        start = time.perf_counter()
        result = call()
        times[stage]["python"] = (time.perf_counter() - start) * 1000
        return result

    py: dict[str, SecAggClient] = {}
    for who in cohort[1:]:
        if who == "p0":
            py[who] = timed("advertise", lambda w=who: SecAggClient(w, setup))
            start = time.perf_counter()
            keys = py[who].advertise()
            times["advertise"]["python"] += (time.perf_counter() - start) * 1000
        else:
            py[who] = SecAggClient(who, setup)
            keys = py[who].advertise()
        server.receive_keys(who, keys)
    server.receive_keys("b", keys_from_json(js("advertise", plan.to_json())))
    server.close_advertise()

    for who, client in py.items():
        call = lambda c=client, w=who: c.share(server.neighbours_of(w))  # noqa: E731
        server.receive_shares(who, timed("share", call) if who == "p0" else call())
    sealed = js("share", neighbours_to_json(server.neighbours_of("b")))
    server.receive_shares("b", sealed_from_json(sealed, "shares", degree))
    server.close_share()

    for who, client in py.items():
        call = lambda c=client, w=who: c.masked(server.shares_for(w), inputs[w])  # noqa: E731
        server.receive_masked(who, timed("masked", call) if who == "p0" else call())
    masked = js("masked", sealed_to_json(server.shares_for("b")), inputs["b"])
    server.receive_masked("b", np.frombuffer(_unb64(masked), dtype="<u4").astype(np.uint32))
    view = server.close_masked()

    for who, client in py.items():
        call = lambda c=client: c.confirm(view)  # noqa: E731
        server.receive_confirmations(who, timed("confirm", call) if who == "p0" else call())
    confirmations = js("confirm", view_to_json(view))
    server.receive_confirmations("b", sealed_from_json(confirmations, "confirmations", degree))
    server.close_confirm()

    for who, client in py.items():
        call = lambda c=client, w=who: c.unmask(server.confirmations_for(w))  # noqa: E731
        server.receive_unmask(who, *(timed("unmask", call) if who == "p0" else call()))
    shares = js("unmask", sealed_to_json(server.confirmations_for("b")))
    server.receive_unmask("b", *shares_from_json(shares, degree))
    total = server.finish()
    expected = sum(inputs[c].astype(np.uint64) for c in cohort) % (1 << 32)
    if not np.array_equal(total.astype(np.uint64), expected):
        raise RuntimeError("the unmasked sum is wrong: this round does not count")
    return times


def encode_times(browser, degree: int, threshold: int, repeats: int) -> dict[str, float]:
    """Quantizing the 44,426 values: the browser's encode() and Python's VectorCodec."""
    plan = plan_for(degree, threshold, b"encode")
    values = np.random.default_rng(0).uniform(-1, 1, LENGTH)
    browser_ms, python_ms = [], []
    import torch

    for _ in range(repeats):
        out = browser.execute_async_script(STAGE, "encode", plan.to_json(), _b64(values.tobytes()))
        browser_ms.append(out["ms"])
        start = time.perf_counter()
        plan.codec.encode({"v": torch.from_numpy(values)}, np.random.default_rng())
        python_ms.append((time.perf_counter() - start) * 1000)
    return {"browser": statistics.median(browser_ms), "python": statistics.median(python_ms)}


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    import base64

    return base64.b64decode(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--degrees", type=int, nargs="+", default=[26, 66], choices=THRESHOLDS)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if not (ROOT / "web" / "node_modules" / "@tensorflow" / "tfjs").is_dir():
        raise SystemExit("needs the browser client's files: run `npm ci --prefix web`")
    results: dict[str, Any] = {"length": LENGTH, "repeats": args.repeats, "degrees": {}}
    with tempfile.TemporaryDirectory(prefix="fedge-secagg-bench-") as tmp:
        server, url = start_server(Path(tmp))
        browser = None
        try:
            browser = chromium()
            results["chromium"] = browser.capabilities.get("browserVersion", "?")
            browser.get(url + "/client/secagg.js")  # the module's origin, no page script
            for degree in args.degrees:
                threshold = THRESHOLDS[degree]
                say(f"k = {degree}, t = {threshold}: {args.repeats} rounds")
                one_round(browser, degree, threshold, 1000)  # warm-up, not timed
                rounds = [one_round(browser, degree, threshold, i) for i in range(args.repeats)]
                medians = {
                    stage: {
                        who: statistics.median(r[stage][who] for r in rounds)
                        for who in ("browser", "python")
                    }
                    for stage in STAGES
                }
                medians["encode"] = encode_times(browser, degree, threshold, args.repeats)
                results["degrees"][degree] = {"threshold": threshold, "ms": medians}
        finally:
            if browser is not None:
                browser.quit()
            server.terminate()
            server.wait(timeout=30)
    print(f"\nChromium {results['chromium']}, {LENGTH:,} values, median of {args.repeats} rounds")
    print(f"{'k / t':>8} {'stage':>10} {'browser ms':>11} {'python ms':>10} {'ratio':>7}")
    for degree, entry in results["degrees"].items():
        total = {"browser": 0.0, "python": 0.0}
        for stage, ms in entry["ms"].items():
            for who in total:
                total[who] += ms[who]
            ratio = ms["browser"] / ms["python"]
            label = f"{degree} / {entry['threshold']}"
            print(
                f"{label:>8} {stage:>10} {ms['browser']:11.1f} {ms['python']:10.1f} {ratio:6.2f}×"
            )
        ratio = total["browser"] / total["python"]
        print(
            f"{'':>8} {'total':>10} {total['browser']:11.1f} {total['python']:10.1f} {ratio:6.2f}×"
        )
        entry["total_ms"] = total
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
