"""`fedge models ...`: register a simulation's output, list, show and promote versions."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedge.central.registry import ModelRegistry
from fedge.central.storage import LocalStore
from fedge.cli.main import app
from fedge.models.spec import build_model, preset_spec
from fedge.sim.outputs import RunDirectory

runner = CliRunner()


def fedge(*args, env=None):
    return runner.invoke(app, [str(a) for a in args], env=env)


@pytest.fixture
def run_dir(tmp_path, digits):
    """A finished `fedge simulate` folder, written by the simulator's own writer."""
    config = digits(model={"preset": "mlp", "hidden": [16]})
    spec = preset_spec("mlp", (1, 8, 8), 10, hidden=[16])
    out = RunDirectory(tmp_path / "run")
    out.write_config(config)
    history = [{"round": 1, "test_accuracy": 0.5, "test_loss": 1.2, "train_loss": 1.4}]
    summary = {"name": config.name, "rounds": 1, "final_test_accuracy": 0.5}
    return out.finish(summary, history, build_model(spec).state_dict(), spec)


@pytest.fixture
def store_url(tmp_path, monkeypatch):
    url = str(tmp_path / "store")
    monkeypatch.setenv("FEDGE_STORE", url)
    return url


@pytest.mark.parametrize(
    "command", [[], ["list"], ["show"], ["promote"], ["register"]], ids=lambda c: "-".join(c)
)
def test_every_models_command_has_help(command):
    result = fedge("models", *command, "--help")
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_register_list_show_promote(run_dir, store_url):
    result = fedge("models", "register", "digits", run_dir, "--data-version", "digits@1")
    assert result.exit_code == 0, result.output
    assert "registered digits version 1" in result.output
    assert fedge("models", "register", "digits", run_dir, "--promote", "staging").exit_code == 0

    version = ModelRegistry(LocalStore(store_url)).get("digits", 1)
    assert sorted(version.files) == ["model.json", "model.onnx", "model.safetensors"]
    assert version.metrics["final_test_accuracy"] == 0.5
    assert version.config["partition"]["scheme"] == "dirichlet"
    assert version.data_version == "digits@1"

    listing = fedge("models", "list")
    assert listing.exit_code == 0, listing.output
    assert "digits" in listing.output and "staging → 2" in listing.output

    versions = fedge("models", "show", "digits")
    assert versions.exit_code == 0, versions.output
    assert "final_test_accuracy=" in versions.output

    promoted = fedge("models", "promote", "digits", "1")
    assert promoted.exit_code == 0, promoted.output
    assert "digits: production → version 1" in promoted.output
    moved = fedge("models", "promote", "digits", "staging")
    assert "production → version 2 (was version 1)" in moved.output

    detail = fedge("models", "show", "digits", "production")
    assert detail.exit_code == 0, detail.output
    assert "digits version 2" in detail.output and "production, staging" in detail.output
    assert version.files["model.onnx"].sha256 in detail.output.replace("\n", "").replace(" ", "")

    as_json = fedge("models", "show", "digits", "1", "--json")
    assert json.loads(as_json.output)["data_version"] == "digits@1"


def _register_without_export(store_path, run_dir, name="m"):
    files = {f: (run_dir / f).read_bytes() for f in ("model.safetensors", "model.json")}
    ModelRegistry(LocalStore(store_path)).register(name, files)


def test_store_option_beats_the_environment(run_dir, store_url, tmp_path):
    _register_without_export(tmp_path / "other", run_dir)
    listing = fedge("models", "list", "--store", tmp_path / "other")
    assert listing.exit_code == 0 and "m " in listing.output
    empty = fedge("models", "list")
    assert empty.exit_code == 0 and f"no models in {Path(store_url).as_uri()}" in empty.output


def test_default_store_is_fedge_store_in_the_working_folder(run_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("FEDGE_STORE", raising=False)
    monkeypatch.chdir(tmp_path)
    _register_without_export(tmp_path / "fedge-store", run_dir)
    assert "m " in fedge("models", "list").output


def test_s3_store_by_url(run_dir, bucket, monkeypatch):
    monkeypatch.setenv("FEDGE_STORE", f"s3://{bucket}/registry")
    result = fedge("models", "register", "m", run_dir, "--promote", "production")
    assert result.exit_code == 0, result.output
    listing = fedge("models", "list")
    assert f"s3://{bucket}/registry/" in listing.output and "production → 1" in listing.output


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["show", "nope"], 7, "unknown model 'nope'"),
        (["show", "m", "9"], 7, "has no version 9"),
        (["show", "m", "prod"], 7, "has no alias 'prod'"),
        (["promote", "m", "1", "--alias", "42"], 7, "invalid alias '42'"),
        (["promote", "m", "3"], 7, "has no version 3"),
        (["list", "--store", "gs://bucket"], 6, "unsupported store URL"),
    ],
)
def test_bad_requests_end_with_one_error_line(run_dir, store_url, args, code, message):
    _register_without_export(store_url, run_dir)
    result = fedge("models", *args)
    assert result.exit_code == code, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_register_refuses_a_folder_that_is_not_a_finished_run(run_dir, store_url):
    (run_dir / "summary.json").unlink()
    result = fedge("models", "register", "m", run_dir)
    assert result.exit_code == 2
    assert "is not a finished fedge run: summary.json missing" in result.output
    assert fedge("models", "register", "m", run_dir.parent / "absent").exit_code == 2
    assert fedge("models", "list").output.startswith("no models")


def test_register_validates_the_alias_before_registering(run_dir, store_url):
    result = fedge("models", "register", "m", run_dir, "--promote", "7")
    assert result.exit_code == 7 and "invalid alias" in result.output
    assert "no models" in fedge("models", "list").output
