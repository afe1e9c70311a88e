"""The command line, run as a real process for the main paths and in-process for errors."""

import importlib.metadata
import inspect
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from fedge.cli.main import app

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "examples" / "digits_quick.toml"
runner = CliRunner()


def fedge(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "fedge", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


def test_simulate_writes_a_complete_result(tmp_path):
    out = tmp_path / "run"
    proc = fedge("simulate", DIGITS, "--set", "rounds=3", "--out", out, "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "test accuracy" in proc.stdout
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["round"] for m in metrics] == [1, 2, 3]
    assert all({"round", "test_accuracy", "test_loss", "seconds"} <= m.keys() for m in metrics)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 3
    best = max(metrics, key=lambda m: m["test_accuracy"])
    said = " ".join(proc.stdout.split())
    assert f"{100 * metrics[-1]['test_accuracy']:.2f}% after 3 rounds" in said
    assert f"best {100 * best['test_accuracy']:.2f}% in round {best['round']}" in said
    assert summary["final_test_accuracy"] == metrics[-1]["test_accuracy"]
    assert summary["peak_memory_mb"] > 0
    assert "rounds = 3" in (out / "config.toml").read_text()
    assert (out / "curves.png").stat().st_size > 1000


def test_engine_options_override_the_file_and_set(tmp_path):
    args = ["--set", "rounds=1", "--set", 'engine="ray"', "--engine", "sequential"]
    result = _invoke(tmp_path, DIGITS.read_text(), *args, "--threads", "1", "--quiet")
    assert result.exit_code == 0, result.output
    assert "engine sequential" in result.output
    config = (tmp_path / "out" / "config.toml").read_text()
    assert 'engine = "sequential"' in config and "threads = 1" in config


def _invoke(tmp_path, config_text, *args):
    cfg = tmp_path / "exp.toml"
    cfg.write_text(config_text)
    return runner.invoke(app, ["simulate", str(cfg), "--out", str(tmp_path / "out"), *args])


BAD = [
    ("typo = 1\n", [], "typo: unknown key"),
    ("", ["--set", "rounds=ten"], "rounds: Input should be a valid integer"),
    ("", ["--set", "client.lr=-0.5"], "client.lr: Input should be greater than 0"),
    ("", ["--set", "client.lr=0"], "client.lr: Input should be greater than 0"),
    ("", ["--set", "server.clients_per_round=21"], r"clients per round \(21\) is more than"),
    ("", ["--set", "partition.scheme=zipf"], "unknown choice 'zipf'"),
    ("", ["--set", "model.preset=resnet"], "model.preset"),
    ("", ["--set", "nonsense"], "not of the form key=value"),
    ("", ["--engine", "gpu"], "engine: Input should be 'sequential', 'vectorized' or 'ray'"),
    ("", ["--max-memory", "0"], "max_memory_mb: Input should be greater than 0"),
]


@pytest.mark.parametrize(("extra", "args", "message"), BAD)
def test_bad_configs_fail_with_one_line_and_no_output(tmp_path, extra, args, message):
    result = _invoke(tmp_path, extra + DIGITS.read_text(), *args)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: ")
    assert re.search(message, lines[0]), lines[0]
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "out.partial").exists()


def test_missing_dataset_is_a_data_error(tmp_path):
    cfg = tmp_path / "exp.toml"
    cfg.write_text(
        'rounds = 2\n[data]\nname = "leaf"\npath = "%s"\n[model]\npreset = "logreg"\n'
        % (tmp_path / "nope")
    )
    result = runner.invoke(app, ["simulate", str(cfg), "--out", str(tmp_path / "out")])
    assert result.exit_code == 3
    assert "error:" in result.output and "nope" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_corrupt_leaf_file_is_a_data_error(tmp_path):
    leaf = tmp_path / "leaf"
    (leaf / "train").mkdir(parents=True)
    (leaf / "test").mkdir()
    (leaf / "train" / "part.json").write_text('{"users": ["a"], "num_samples": [1], "user_da')
    (leaf / "test" / "part.json").write_text('{"users": [], "num_samples": [], "user_data": {}}')
    cfg = tmp_path / "exp.toml"
    cfg.write_text(
        f'rounds = 1\n[data]\nname = "leaf"\npath = "{leaf}"\n[model]\npreset = "logreg"\n'
    )
    result = runner.invoke(app, ["simulate", str(cfg), "--out", str(tmp_path / "out")])
    assert result.exit_code == 3
    assert "part.json" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_missing_config_file(tmp_path):
    result = runner.invoke(app, ["simulate", str(tmp_path / "none.toml")])
    assert result.exit_code == 2
    assert "config file not found" in result.output


def test_data_describe_prints_counts_and_saves_a_plot(tmp_path):
    plot = tmp_path / "parts.png"
    result = runner.invoke(
        app,
        ["data", "describe", str(DIGITS), "--set", "partition.num_clients=5", "--plot", str(plot)],
    )
    assert result.exit_code == 0, result.output
    assert "clients" in result.output
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_data_describe_without_a_file(tmp_path):
    result = runner.invoke(
        app,
        [
            "data",
            "describe",
            "--set",
            "data.name=digits",
            "--set",
            "partition.scheme=iid",
            "--set",
            "partition.num_clients=3",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "1,437" in result.output or "1437" in result.output


@pytest.mark.parametrize(
    "command", [[], ["simulate"], ["data"], ["data", "describe"], ["data", "download"]]
)
def test_every_command_has_help(command):
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0
    assert "Usage" in result.output


def test_error_text_in_square_brackets_is_printed_verbatim(tmp_path):
    cfg = tmp_path / "exp.toml"
    cfg.write_text(
        'rounds = 1\n[data]\nname = "leaf"\npath = "[red]x[/]"\n[model]\npreset = "logreg"\n'
    )
    result = runner.invoke(app, ["simulate", str(cfg), "--out", str(tmp_path / "out")])
    assert result.exit_code == 3
    assert "[red]x[/]" in result.output


def test_simulate_ends_with_the_final_and_the_best_rounds_accuracy(tmp_path, monkeypatch):
    import fedge.sim.experiment as experiment

    summary = {
        "final_test_accuracy": 0.5,
        "best_test_accuracy": 0.75,
        "best_round": 2,
        "rounds": 3,
        "seconds": 1.0,
    }
    monkeypatch.setattr(experiment, "run_to_folder", lambda fed, out, **kw: (summary, out))
    result = _invoke(tmp_path, DIGITS.read_text(), "--quiet")
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "test accuracy 50.00% after 3 rounds, best 75.00% in round 2" in said


TRAIN_JOB = """\
name = "t"
[data]
name = "digits"
[model]
preset = "logreg"
[train]
epochs = 3
batch_size = 64
lr = 0.05
"""


def test_train_ends_with_the_final_and_the_best_epochs_accuracy(tmp_path):
    job, out = tmp_path / "job.toml", tmp_path / "run"
    job.write_text(TRAIN_JOB)
    result = runner.invoke(app, ["train", str(job), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    best = max(metrics, key=lambda m: m["test_accuracy"])
    said = " ".join(result.output.split())
    assert f"test accuracy {100 * metrics[-1]['test_accuracy']:.2f}% after 3 epochs" in said
    assert f"best {100 * best['test_accuracy']:.2f}% in epoch {best['epoch']}" in said


def test_train_names_a_best_epoch_before_the_last(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import fedge.central.jobs as jobs

    summary = {
        "final_test_accuracy": 0.5,
        "best_test_accuracy": 0.75,
        "best_epoch": 2,
        "epochs": 3,
        "seconds_per_epoch": 1.0,
    }
    result = SimpleNamespace(summary=summary, out=tmp_path / "run")
    monkeypatch.setattr(jobs, "run_job", lambda *args, **kw: result)
    job = tmp_path / "job.toml"
    job.write_text(TRAIN_JOB)
    invoked = runner.invoke(app, ["train", str(job), "--out", str(tmp_path / "run"), "--quiet"])
    assert invoked.exit_code == 0, invoked.output
    said = " ".join(invoked.output.split())
    assert "test accuracy 50.00% after 3 epochs, best 75.00% in epoch 2 (1.00 s" in said


def test_version_is_the_installed_packages():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output == f"fedge {importlib.metadata.version('fedge')}\n"


def _help(*command):
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "1000"})
    assert result.exit_code == 0, result.output
    return result.output


def _listed(output):
    """The command names of a help page's Commands panel, in order."""
    return re.findall(r"^│ ([a-z][a-z-]*) ", output, re.M)


def test_commands_are_listed_in_workflow_order():
    workflow = ["simulate", "data", "train", "compare", "models", "serve", "tokens", "edge",
                "server", "client"]  # fmt: skip
    assert _listed(_help()) == [*workflow, "privacy"]
    assert _listed(_help("data")) == ["describe", "download", "upload", "versions"]


def _commands(group, path=()):
    """``(path, command)`` for the root and every command and group below it."""
    yield path, group
    for name, command in getattr(group, "commands", {}).items():
        yield from _commands(command, (*path, name))


def _lines(output):
    """The help page's lines without the panels' borders, spaces collapsed."""
    return [" ".join(line.strip("│╭╮╰╯─ ").split()) for line in output.splitlines()]


def _unescaped(help_text):
    """Help text as written (fedge escapes square brackets for rich)."""
    return (help_text or "").replace("\\[", "[")


def _paragraphs(text):
    return [" ".join(p.split()) for p in inspect.cleandoc(text).split("\n\n") if p.strip()]


ALL = list(_commands(typer.main.get_command(app)))


@pytest.mark.parametrize(("path", "command"), ALL, ids=[" ".join(p) or "fedge" for p, _ in ALL])
def test_help_text_is_shown_as_written_without_hard_line_breaks(path, command):
    """Every paragraph of a command's help, and every option's help, is one line of its
    help page (on a wide terminal), with its square brackets: typer keeps a docstring's
    line breaks and takes [data] for rich markup unless fedge prevents it."""
    lines = _lines(_help(*path))
    callback = getattr(command, "callback", None)
    doc = inspect.getdoc(callback) if callback is not None and path else None
    texts = _paragraphs(doc or _unescaped(command.help))
    helps = [getattr(param, "help", None) for param in command.params]
    texts += [" ".join(_unescaped(text).split()) for text in helps if text]
    for text in texts:
        assert any(text in line for line in lines), f"{text!r} is not one line of the help"
    assert "<bool>" not in "\n".join(lines)
