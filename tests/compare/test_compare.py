"""`fedge compare` end to end on scikit-learn's digits: a centralized, a 2-worker
data-parallel and two federated arms; the report's numbers against the arms' own files;
resuming."""

import base64
import json
import re
import shutil

import pytest
from typer.testing import CliRunner

from fedge.central.jobs import prepare_job, run_job
from fedge.cli.main import app
from fedge.compare.config import load_compare_config
from fedge.compare.runner import arm_folder, job_config, run_comparison

runner = CliRunner()

CONFIG = """
name = "digits-test"
seed = 0
store = "{store}"
target_accuracy = 0.7

[dataset]
name = "digits"
[dataset.source]
name = "digits"

[model]
preset = "mlp"
hidden = [16]

[budget]
epochs = 2

[[arms]]
name = "central"
kind = "central"
train = {{ batch_size = 32, lr = 0.05, momentum = 0.9, threads = 1 }}

[[arms]]
name = "ddp"
kind = "data_parallel"
workers = 2
batch_sizes = [128]
train = {{ lr = 0.05, reference_batch = 32, warmup_epochs = 1, momentum = 0.9 }}

[[arms]]
name = "fedavg-iid"
kind = "federated"
partition = {{ scheme = "iid", num_clients = 6 }}
server = {{ clients_per_round = 3 }}
client = {{ epochs = 1, batch_size = 16, lr = 0.05, momentum = 0.9 }}
threads = 1

[[arms]]
name = "fedprox-dir"
kind = "federated"
partition = {{ scheme = "dirichlet", num_clients = 6, beta = 0.5, min_size = 5 }}
server = {{ clients_per_round = 3 }}
client = {{ epochs = 1, batch_size = 16, lr = 0.05, momentum = 0.9 }}
strategy = {{ name = "fedprox", mu = 0.01 }}
threads = 1
"""
ARMS = ["central", "ddp-b128", "fedavg-iid", "fedprox-dir"]


def write_config(tmp_path, text=CONFIG):
    path = tmp_path / "compare.toml"
    path.write_text(text.format(store=tmp_path / "store"))
    return path


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compare")
    path, out = write_config(tmp), tmp / "out"
    result = runner.invoke(app, ["compare", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return path, out, result.output


def summary(out, arm):
    return json.loads((arm_folder(out, arm) / "summary.json").read_text())


def metrics(out, arm):
    text = (arm_folder(out, arm) / "metrics.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


def table(markdown):
    """The results table of report.md as {arm: {column: cell}}."""
    rows = [line for line in markdown.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in rows[0].strip("|").split("|")]
    cells = [[c.strip() for c in row.strip("|").split("|")] for row in rows[2:]]  # no ---
    return {row[0]: dict(zip(header, row, strict=True)) for row in cells}


UNITS = {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9}


def number(cell):
    """A table cell as a number: '94.17%' → 0.9417, '1.23 MB' → 1.23e6, '0.6 s' → 0.6."""
    if cell.endswith("%"):
        return float(cell[:-1]) / 100
    value, _, unit = cell.partition(" ")
    if unit == "s":
        return float(value)
    if unit in UNITS:
        return float(value) * UNITS[unit]
    return float(value.replace(",", ""))


def test_every_arm_ran_with_its_own_machinery(comparison):
    _, out, output = comparison
    for arm in ARMS:
        folder = arm_folder(out, arm)
        assert {"config.toml", "metrics.jsonl", "summary.json", "model.safetensors"} <= {
            p.name for p in folder.iterdir()
        }
        assert f"{arm}: final test accuracy" in output
    assert summary(out, "ddp-b128")["workers"] == 2
    assert summary(out, "fedprox-dir")["strategy"] == "fedprox"
    assert "arm 4/4: fedprox-dir" in output


def test_every_arm_reads_the_same_data_and_test_set_under_the_same_budget(comparison):
    _, out, _ = comparison
    summaries = [summary(out, arm) for arm in ARMS]
    assert {s["data_version"] for s in summaries} == {"digits@1"}
    assert len({s["test_set_sha256"] for s in summaries}) == 1
    assert len({(s["num_train"], s["num_test"]) for s in summaries}) == 1
    for s in summaries[:2]:
        assert s["epochs_of_compute"] == 2.0
    for s in summaries[2:]:  # whole rounds of 3 of 6 clients: within a quarter epoch of 2
        assert abs(s["epochs_of_compute"] - 2.0) <= 0.25
    report = (out / "report.md").read_text()
    sha = summaries[0]["test_set_sha256"]
    assert "digits@1" in report and sha[:16] in report and "the same for every arm" in report
    assert "2 passes over the training data per arm" in report


def test_the_report_table_holds_the_numbers_of_the_arms_files(comparison):
    _, out, _ = comparison
    rows = table((out / "report.md").read_text())
    assert list(rows) == ARMS
    for arm in ARMS:
        s, lines, row = summary(out, arm), metrics(out, arm), rows[arm]
        # Totals in the summary are the sums of the metric lines...
        for key in ("bytes_sent", "bytes_up", "bytes_data", "samples_uploaded", "examples"):
            assert s[key] == sum(m[key] for m in lines), (arm, key)
        seconds = sum(m["seconds"] for m in lines)
        assert s["seconds"] == pytest.approx(seconds, rel=0.05, abs=0.02)
        # ...and the report shows them, rounded as printed.
        assert number(row["final accuracy"]) == pytest.approx(s["final_test_accuracy"], abs=5e-5)
        assert number(row["best accuracy"]) == pytest.approx(s["best_test_accuracy"], abs=5e-5)
        assert number(row["wall time"]) == pytest.approx(seconds, abs=0.05)
        assert number(row["epochs of compute"]) == pytest.approx(s["epochs_of_compute"], abs=5e-3)
        assert number(row["bytes communicated"]) == pytest.approx(s["bytes_sent"], rel=5e-3)
        per = s["bytes_up"] / s["participants"]
        assert number(row["sent per participant"]) == pytest.approx(per, rel=5e-3, abs=0.5)
        assert number(row["samples off devices"]) == s["samples_uploaded"]
        # Time to 70%: the running wall time at the first evaluation that reached it.
        elapsed, reached = 0.0, None
        for m in lines:
            elapsed += m["seconds"]
            if reached is None and (m["test_accuracy"] or 0) >= 0.7:
                reached = elapsed
        cell = row["time to 70.00%"]
        if reached is None:
            assert cell == "not reached"
        else:
            assert number(cell) == pytest.approx(reached, abs=0.05)
    n = summary(out, "central")["num_train"]
    assert number(rows["central"]["samples off devices"]) == n
    assert number(rows["fedavg-iid"]["samples off devices"]) == 0
    assert number(rows["central"]["sent per participant"]) == 0


def test_report_json_holds_the_same_numbers_unrounded(comparison):
    _, out, _ = comparison
    data = json.loads((out / "report.json").read_text())
    for row in data["arms"]:
        s = summary(out, row["arm"])
        for key in ("final_test_accuracy", "best_test_accuracy", "bytes_sent", "samples_uploaded"):
            assert row[key] == s[key]
        assert row["seconds"] == pytest.approx(sum(m["seconds"] for m in metrics(out, row["arm"])))


def test_the_html_report_is_self_contained(comparison):
    _, out, _ = comparison
    page = (out / "report.html").read_text()
    images = re.findall(r'<img alt="[^"]*" src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 3
    for data in images:
        assert base64.b64decode(data).startswith(b"\x89PNG\r\n\x1a\n")
    assert not re.search(r'(src|href)="(?!data:)', page)  # nothing to fetch
    for arm in ARMS:
        assert f"<td>{arm}</td>" in page
    markdown = (out / "report.md").read_text()
    for name in ("accuracy_vs_time.png", "accuracy_vs_epochs.png", "accuracy_vs_bytes.png"):
        assert f"]({name})" in markdown and (out / name).is_file()


def test_the_report_is_made_from_the_files(comparison, tmp_path):
    path, out, _ = comparison
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    folder = arm_folder(copy, "central")
    planted = {
        "final_test_accuracy": 0.123456,
        "best_test_accuracy": 0.654321,
        "epochs_of_compute": 7.125,
        "bytes_sent": 4_560_000,
        "samples_uploaded": 1234,
    }
    (folder / "summary.json").write_text(json.dumps(summary(copy, "central") | planted))
    result = runner.invoke(app, ["compare", str(path), "--out", str(copy), "--report-only"])
    assert result.exit_code == 0, result.output
    row = table((copy / "report.md").read_text())["central"]
    shown = [row[c] for c in ("final accuracy", "best accuracy", "epochs of compute")]
    assert shown == ["12.35%", "65.43%", "7.12"]
    assert (row["bytes communicated"], row["samples off devices"]) == ("4.56 MB", "1,234")


def test_a_rerun_resumes_without_running_finished_arms_again(comparison, tmp_path):
    path, out, _ = comparison
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    shutil.rmtree(arm_folder(copy, "fedavg-iid"))
    kept = [arm for arm in ARMS if arm != "fedavg-iid"]
    stamps = {arm: (arm_folder(copy, arm) / "summary.json").stat().st_mtime_ns for arm in kept}
    result = runner.invoke(app, ["compare", str(path), "--out", str(copy), "--quiet"])
    assert result.exit_code == 0, result.output
    for arm, stamp in stamps.items():
        assert (arm_folder(copy, arm) / "summary.json").stat().st_mtime_ns == stamp, arm
    assert summary(copy, "fedavg-iid")["final_test_accuracy"] == pytest.approx(
        summary(out, "fedavg-iid")["final_test_accuracy"]
    )  # the same seed: the same run
    changed = runner.invoke(
        app, ["compare", str(path), "--out", str(copy), "--set", "budget.epochs=3"]
    )
    assert changed.exit_code == 2
    assert "differs in budget" in changed.output and "--force" in changed.output


class _Interrupt:
    def epoch_started(self, epoch, steps):
        pass

    def step_finished(self, examples):
        pass

    def epoch_finished(self, metrics):
        raise KeyboardInterrupt


def test_an_interrupted_training_job_continues_from_its_checkpoint(tmp_path):
    config = load_compare_config(write_config(tmp_path), ["arms.central.train.lr=0.1"])
    config = config.model_copy(update={"arms": config.arms[:1]})
    out = tmp_path / "out"
    from fedge.compare.runner import open_comparison

    resolved = open_comparison(config, out)
    job = prepare_job(job_config(resolved, resolved.arms[0]))
    with pytest.raises(KeyboardInterrupt):
        run_job(job, arm_folder(out, "central"), observers=[_Interrupt()])
    run_comparison(config, out)
    s = summary(out, "central")
    assert s["resumed_at_epoch"] == 1 and s["epochs"] == 2
    assert [m["epoch"] for m in metrics(out, "central")] == [1, 2]
    assert s["samples_uploaded"] == s["num_train"]  # counted once, in the first epoch


def test_an_arm_that_diverges_is_reported_and_the_others_run(tmp_path):
    config = load_compare_config(
        write_config(tmp_path), ["arms.central.train.lr=1e12", "budget.epochs=1"]
    )
    config = config.model_copy(update={"arms": [config.arms[0], config.arms[2]]})
    out = tmp_path / "out"
    md, _ = run_comparison(config, out)
    assert not arm_folder(out, "central").exists()
    assert (arm_folder(out, "fedavg-iid") / "summary.json").is_file()
    report = md.read_text()
    assert "Arm central failed: training diverged" in report
    assert list(table(report)) == ["fedavg-iid"]


def test_force_starts_over(comparison, tmp_path):
    from fedge.compare.runner import open_comparison

    path, out, _ = comparison
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    changed = load_compare_config(path, ["budget.epochs=3"])
    resolved = open_comparison(changed, copy, force=True)
    assert resolved.budget.epochs == 3 and resolved.dataset.version == 1
    assert not (copy / "arms").exists()
    assert load_compare_config(copy / "config.toml").budget.epochs == 3
