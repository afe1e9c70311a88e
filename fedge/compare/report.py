"""The comparison report: ``report.md`` and a self-contained ``report.html``, made only from
the arms' own output folders.

Every number in the report is read from an arm's ``summary.json`` or computed from its
``metrics.jsonl`` (running sums of its lines), never typed in: final and best accuracy,
wall time, epochs of compute, bytes and samples from the summary; the curves and the time
to reach the target accuracy from the metric lines. ``report.json`` holds the table's
numbers unrounded, for scripts.

Figures (PNG, beside the Markdown file and embedded in the HTML as data URIs): test
accuracy against wall time, against epochs of compute (training examples processed over
the training-set size) and against bytes communicated (``bytes_sent``, see
:mod:`fedge.traffic`).
"""

from __future__ import annotations

import base64
import html
import json
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from fedge.compare.config import (
    CentralArm,
    CompareConfig,
    DataParallelArm,
    FederatedArm,
    parse_compare_config,
)
from fedge.config import read_toml

__all__ = ["ArmResult", "Point", "Report", "build_report", "load_results", "write_report"]

AnyArm = CentralArm | DataParallelArm | FederatedArm
KIND_LABELS = {"central": "centralized", "data_parallel": "data-parallel", "federated": "federated"}
FIGURES = (
    ("accuracy_vs_time.png", "seconds", "wall time (s)", "Test accuracy against wall time"),
    (
        "accuracy_vs_epochs.png",
        "epochs",
        "epochs of compute (examples processed / training set)",
        "Test accuracy against epochs of compute",
    ),
    (
        "accuracy_vs_bytes.png",
        "bytes",
        "bytes communicated (log scale)",
        "Test accuracy against bytes communicated",
    ),
)
COLUMNS = (
    "arm",
    "kind",
    "setting",
    "final accuracy",
    "best accuracy",
    "time to target",
    "wall time",
    "epochs of compute",
    "bytes communicated",
    "sent per participant",
    "samples off devices",
)


@dataclass(frozen=True)
class Point:
    """One evaluation of an arm: running totals up to and including its metric line."""

    seconds: float
    epochs: float
    bytes: int
    accuracy: float


@dataclass(frozen=True)
class ArmResult:
    """A finished arm: its settings, its summary, its metric lines and its run config."""

    arm: AnyArm
    summary: dict[str, Any]
    history: list[dict[str, Any]]
    run_config: dict[str, Any]

    @property
    def name(self) -> str:
        return self.arm.name

    @property
    def kind(self) -> str:
        return self.arm.kind

    def points(self) -> list[Point]:
        """The evaluated lines, with wall time, epochs of compute and bytes summed over
        every line up to each."""
        n = max(int(self.summary["num_train"]), 1)
        seconds = examples = sent = 0.0
        out = []
        for m in self.history:
            seconds += m["seconds"]
            examples += m["examples"]
            sent += m["bytes_sent"]
            if m.get("test_accuracy") is not None:
                out.append(Point(seconds, examples / n, int(sent), m["test_accuracy"]))
        return out

    def wall_time(self) -> float:
        """Seconds of all the arm's epochs or rounds (training and evaluation)."""
        return sum(m["seconds"] for m in self.history)

    def time_to(self, target: float) -> float | None:
        """Wall time at the first evaluation with accuracy >= ``target`` (None: never)."""
        return next((p.seconds for p in self.points() if p.accuracy >= target), None)

    def setting(self) -> str:
        """The arm's settings in a few words, from its run config."""
        cfg = self.run_config
        if isinstance(self.arm, FederatedArm):
            strategy = cfg["strategy"]["name"]
            if "mu" in cfg["strategy"]:
                strategy += f" μ={cfg['strategy']['mu']:g}"
            client = cfg["client"]
            batch = client.get("batch_size", "full")
            return (
                f"{strategy}, {_partition(cfg['partition'])}, "
                f"{self.summary['num_clients']} clients, {self.summary['clients_per_round']} "
                f"per round, E={client['epochs']}, B={batch}, lr {client['lr']:g}, "
                f"{self.summary['rounds']} rounds"
            )
        train = cfg["train"]
        where = (
            f"{self.summary['workers']} workers"
            if isinstance(self.arm, DataParallelArm)
            else f"1 process, {train['threads']} thread{'s' if train['threads'] > 1 else ''}"
        )
        warm = f", warm-up {train['warmup_epochs']:g} ep" if train.get("warmup_epochs") else ""
        return f"{where}, batch {train['batch_size']}, peak lr {self.summary['peak_lr']:g}{warm}"


def _partition(p: dict[str, Any]) -> str:
    scheme = p["scheme"]
    if scheme == "iid":
        return "IID"
    if scheme == "dirichlet":
        return f"Dir({p['beta']:g})"
    if scheme == "label_k":
        return f"#C={p['k']}"
    if scheme == "quantity_skew":
        return f"quantity skew Dir({p['beta']:g})"
    if scheme == "shards":
        return f"{p['shards_per_client']} shards each"
    return scheme


def load_results(out: Path) -> tuple[CompareConfig, list[ArmResult], list[str]]:
    """The resolved comparison in ``out``, its finished arms (in config order) and, for
    each arm not finished, why (not run yet, or its training's error)."""
    from fedge.compare.runner import arm_folder, failure_file

    out = Path(out)
    config = parse_compare_config(read_toml(out / "config.toml"), str(out / "config.toml"))
    results, missing = [], []
    for arm in config.expanded_arms():
        folder = arm_folder(out, arm.name)
        if not (folder / "summary.json").is_file():
            failed = failure_file(out, arm.name)
            if failed.is_file():
                error = json.loads(failed.read_text())["error"]
                missing.append(f"{arm.name} failed: {error}")
            else:
                missing.append(f"{arm.name} has not run")
            continue
        lines = (folder / "metrics.jsonl").read_text().splitlines()
        results.append(
            ArmResult(
                arm=arm,
                summary=json.loads((folder / "summary.json").read_text()),
                history=[json.loads(line) for line in lines if line.strip()],
                run_config=read_toml(folder / "config.toml"),
            )
        )
    return config, results, missing


def fmt_bytes(n: float) -> str:
    """``n`` bytes in SI units (1 MB = 10^6 bytes), three significant digits."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f} B"


def fmt_accuracy(a: float) -> str:
    return f"{100 * a:.2f}%"


def fmt_seconds(s: float | None) -> str:
    return "not reached" if s is None else f"{s:.1f} s"


@dataclass(frozen=True)
class Report:
    """What the report says, before it is written as Markdown or HTML."""

    title: str
    facts: list[tuple[str, str]]
    target: float
    rows: list[dict[str, Any]]
    table: list[list[str]]
    observations: list[str]
    warnings: list[str]
    results: list[ArmResult]


def _agreement(results: Sequence[ArmResult], key: str) -> tuple[str, list[str]]:
    values = {r.name: r.summary.get(key) for r in results}
    distinct = sorted({str(v) for v in values.values()})
    if len(distinct) <= 1:
        return (distinct[0] if distinct else "-"), []
    detail = ", ".join(f"{name}: {value}" for name, value in values.items())
    return "differs", [f"The arms do not share the same {key}: {detail}."]


def build_report(out: Path) -> Report:
    """Read the comparison in ``out`` and compute everything the report shows."""
    config, results, missing = load_results(out)
    if not results:
        raise FileNotFoundError(f"no finished arm in {out}")
    best = max(r.summary["best_test_accuracy"] for r in results)
    if config.target_accuracy is not None:
        target, target_note = config.target_accuracy, "from the config"
    else:
        target, target_note = 0.9 * best, "90% of the best accuracy any arm reached"
    version, warnings = _agreement(results, "data_version")
    fingerprint, more = _agreement(results, "test_set_sha256")
    num_test, more2 = _agreement(results, "num_test")
    num_train, more3 = _agreement(results, "num_train")
    warnings += more + more2 + more3
    warnings += [f"Arm {m} (not in this report)." for m in missing]
    same = "the same for every arm" if not (more or more2) else "NOT the same for every arm"
    facts = [
        ("Dataset", f"{version} from {config.store} ({num_train} training examples)"),
        (
            "Test set",
            f"{num_test} examples, SHA-256 {fingerprint[:16]}…, {same}"
            if fingerprint != "differs"
            else "differs between arms",
        ),
        ("Model", _model(config, results)),
        ("Budget", config.budget.describe()),
        ("Target accuracy", f"{fmt_accuracy(target)} ({target_note})"),
        ("Seed", str(config.seed)),
        (
            "Machine",
            f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, "
            f"Python {platform.python_version()}, torch {torch.__version__}",
        ),
        ("Made", datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")),
    ]
    rows, table = [], []
    for r in results:
        s = r.summary
        row = {
            "arm": r.name,
            "kind": r.kind,
            "setting": r.setting(),
            "final_test_accuracy": s["final_test_accuracy"],
            "best_test_accuracy": s["best_test_accuracy"],
            "time_to_target": r.time_to(target),
            "seconds": r.wall_time(),
            "epochs_of_compute": s["epochs_of_compute"],
            "bytes_sent": s["bytes_sent"],
            "bytes_up_per_participant": s["bytes_up_per_participant"],
            "samples_uploaded": s["samples_uploaded"],
            "bytes_data": s["bytes_data"],
            "participants": s["participants"],
        }
        rows.append(row)
        table.append(
            [
                r.name,
                KIND_LABELS[r.kind],
                row["setting"],
                fmt_accuracy(row["final_test_accuracy"]),
                fmt_accuracy(row["best_test_accuracy"]),
                fmt_seconds(row["time_to_target"]),
                fmt_seconds(row["seconds"]),
                f"{row['epochs_of_compute']:.2f}",
                fmt_bytes(row["bytes_sent"]),
                fmt_bytes(row["bytes_up_per_participant"]),
                f"{row['samples_uploaded']:,}",
            ]
        )
    return Report(
        title=f"fedge compare: {config.name}",
        facts=facts,
        target=target,
        rows=rows,
        table=table,
        observations=_observations(results),
        warnings=warnings,
        results=results,
    )


def _model(config: CompareConfig, results: Sequence[ArmResult]) -> str:
    s = results[0].summary
    source = config.model.preset or str(config.model.spec)
    return f"{s['model']} ({source}, {s['num_parameters']:,} parameters)"


def _delta(r: ArmResult, ref: ArmResult) -> str:
    return f"{100 * (r.summary['final_test_accuracy'] - ref.summary['final_test_accuracy']):+.2f}"


def _same_but_strategy(fedavg: ArmResult, other: ArmResult) -> bool:
    """Whether ``fedavg`` is a FedAvg arm that differs from ``other`` only in strategy."""
    a, b = fedavg.run_config, other.run_config
    keys = ("partition", "client", "server", "rounds")
    return a["strategy"]["name"] == "fedavg" and all(a.get(k) == b.get(k) for k in keys)


def _rate(r: ArmResult) -> float:
    return r.summary["examples"] / max(r.summary["seconds"], 1e-9)


def _observations(results: Sequence[ArmResult]) -> list[str]:
    """Plain statements computed from the numbers (no judgement typed in)."""
    notes = []
    top = max(results, key=lambda r: r.summary["final_test_accuracy"])
    notes.append(
        f"Highest final test accuracy: {top.name} "
        f"({fmt_accuracy(top.summary['final_test_accuracy'])})."
    )
    central = next((r for r in results if r.kind == "central"), None)
    if central is not None:
        ref = central.summary["final_test_accuracy"]
        for r in results:
            if r.kind != "data_parallel":
                continue
            delta = 100 * (r.summary["final_test_accuracy"] - ref)
            notes.append(
                f"{r.name} (global batch {r.run_config['train']['batch_size']}): "
                f"{delta:+.2f} points of final accuracy against {central.name}, at "
                f"{_rate(r) / _rate(central):.2f}× its training examples per second, "
                f"with {fmt_bytes(r.summary['bytes_up'])} of all-reduce traffic."
            )
    federated = [r for r in results if r.kind == "federated"]
    iid = [o for o in federated if o.run_config["partition"]["scheme"] == "iid"]
    for r in federated:
        cfg = r.run_config
        if cfg["partition"]["scheme"] != "iid":
            same = [o for o in iid if o.run_config["strategy"]["name"] == cfg["strategy"]["name"]]
            ref = (same or iid or [central])[0]
            if ref is not None:
                what = "IID" if ref.kind == "federated" else "centralized"
                notes.append(
                    f"{r.name} ({_partition(cfg['partition'])}): {_delta(r, ref)} points of "
                    f"final accuracy against {ref.name} ({what})."
                )
        if cfg["strategy"]["name"] != "fedavg":
            base = next((o for o in federated if _same_but_strategy(o, r)), None)
            if base is not None:
                notes.append(
                    f"{r.name}: {_delta(r, base)} points of final accuracy against "
                    f"{base.name} (FedAvg, the same partition and clients)."
                )
    pooled = [r for r in results if r.kind != "federated"]
    if pooled:
        r = pooled[0]
        notes.append(
            f"Centralized and data-parallel arms train on data moved off the devices: "
            f"{r.summary['samples_uploaded']:,} training samples "
            f"({fmt_bytes(r.summary['bytes_data'])}) each."
        )
    if federated:
        per = [r.summary["bytes_up_per_participant"] for r in federated]
        notes.append(
            f"Federated arms move no training sample off a device; each of their clients "
            f"sent {fmt_bytes(min(per))} to {fmt_bytes(max(per))} of model updates instead."
        )
    return notes


_STYLES = {"central": "-", "data_parallel": "--", "federated": ":"}


def plot_figures(report: Report, folder: Path) -> list[Path]:
    """The three figures as PNG files in ``folder``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    paths = []
    for filename, axis, label, title in FIGURES:
        fig = Figure(figsize=(8, 4.8), layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        for r in report.results:
            pts = [p for p in r.points() if axis != "bytes" or p.bytes > 0]
            xs = [getattr(p, axis) for p in pts]
            ys = [100 * p.accuracy for p in pts]
            ax.plot(xs, ys, _STYLES[r.kind], marker="o", markersize=3, label=r.name)
        ax.axhline(100 * report.target, color="grey", linewidth=0.8, linestyle="-.")
        if axis == "bytes":
            ax.set_xscale("log")
        ax.set(xlabel=label, ylabel="test accuracy (%)", title=title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        path = folder / filename
        fig.savefig(path, dpi=100)
        paths.append(path)
    return paths


_CONVENTIONS = [
    "Wall time is the sum of each arm's per-epoch or per-round `seconds` (training and "
    "test evaluation; process start-up and data loading excluded), on this machine. For a "
    "federated arm it is the simulation's time, all clients trained here; on a fleet, "
    "clients train in parallel on their own devices and wait for the network.",
    "Epochs of compute: training examples processed (forward and backward) divided by "
    "the training-set size.",
    "Bytes communicated (`bytes_sent`): every byte of tensor payload put on a network "
    "link, once. Federated: the task each client of a round downloads (global model and "
    "strategy extras) plus every update it uploads. Data-parallel: ring all-reduce "
    "traffic, 2(W−1)·S for S bytes over W workers, plus the raw training data uploaded "
    "once. Centralized: the raw training data uploaded once (features as stored, int64 "
    "labels). The test set is the evaluator's and is not counted.",
    "Sent per participant: bytes a training participant sent (`bytes_up`) divided by the "
    "participants (clients that took part at least once; workers). The centralized "
    "trainer sends nothing: its cost is the data upload.",
    "Samples off devices: training samples that left their owners' devices.",
    "1 kB = 10³ bytes, 1 MB = 10⁶ bytes, 1 GB = 10⁹ bytes.",
]


def _markdown(report: Report) -> str:
    lines = [f"# {report.title}", ""]
    lines += [f"- **{k}**: {v}" for k, v in report.facts]
    lines.append("")
    for w in report.warnings:
        lines += [f"> **Warning**: {w}", ""]
    lines += ["## Results", ""]
    target = fmt_accuracy(report.target)
    header = [c if c != "time to target" else f"time to {target}" for c in COLUMNS]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(" --- " for _ in header) + "|")
    lines += [
        "| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in report.table
    ]
    lines.append("")
    for filename, _, _, title in FIGURES:
        lines += [f"![{title}]({filename})", ""]
    lines += ["## Observations", ""]
    lines += [f"- {o}" for o in report.observations]
    lines += ["", "## How the numbers are counted", ""]
    lines += [f"- {c}" for c in _CONVENTIONS]
    return "\n".join(lines) + "\n"


_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em;
       color: #222; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.n { text-align: right; white-space: nowrap; }
.warning { background: #fff3cd; border: 1px solid #e0c36a; padding: 0.5em 1em; }
img { max-width: 100%; }
code { background: #f3f3f3; padding: 0 0.2em; }
"""


def _inline(text: str) -> str:
    """Escape ``text`` for HTML, with `code` spans."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _html(report: Report, images: Sequence[Path]) -> str:
    e = html.escape
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(report.title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{e(report.title)}</h1>",
        "<ul>",
        *[f"<li><b>{e(k)}</b>: {e(v)}</li>" for k, v in report.facts],
        "</ul>",
        *[f'<p class="warning"><b>Warning</b>: {e(w)}</p>' for w in report.warnings],
        "<h2>Results</h2>",
        "<table><thead><tr>",
    ]
    target = fmt_accuracy(report.target)
    out += [f"<th>{e(c if c != 'time to target' else f'time to {target}')}</th>" for c in COLUMNS]
    out.append("</tr></thead><tbody>")
    for row in report.table:
        cells = [
            f"<td>{e(cell)}</td>" if i < 3 else f'<td class="n">{e(cell)}</td>'
            for i, cell in enumerate(row)
        ]
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    for path, (_, _, _, title) in zip(images, FIGURES, strict=True):
        data = base64.b64encode(path.read_bytes()).decode()
        out.append(f'<h3>{e(title)}</h3><img alt="{e(title)}" src="data:image/png;base64,{data}">')
    out += ["<h2>Observations</h2>", "<ul>", *[f"<li>{e(o)}</li>" for o in report.observations]]
    out += ["</ul>", "<h2>How the numbers are counted</h2>", "<ul>"]
    out += [f"<li>{_inline(c)}</li>" for c in _CONVENTIONS]
    out += ["</ul>", "</body></html>"]
    return "\n".join(out) + "\n"


def write_report(out: Path) -> tuple[Path, Path]:
    """Write ``report.md`` (with the figures beside it), ``report.html`` (self-contained)
    and ``report.json`` into ``out``; returns the Markdown and HTML paths."""
    out = Path(out)
    report = build_report(out)
    images = plot_figures(report, out)
    md, page = out / "report.md", out / "report.html"
    md.write_text(_markdown(report))
    page.write_text(_html(report, images))
    (out / "report.json").write_text(
        json.dumps(
            {"target_accuracy": report.target, "facts": dict(report.facts), "arms": report.rows},
            indent=2,
        )
        + "\n"
    )
    return md, page
