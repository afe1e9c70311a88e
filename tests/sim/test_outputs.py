"""Result folders: a simulation's (`RunDirectory`) and a training job's (`JobFolder`) are
published by one `ResultFolder.finish`."""

import json

import pytest
from safetensors.torch import load_file

from fedge.central.job_folder import CHECKPOINT, JobFolder
from fedge.models.spec import build_model, preset_spec
from fedge.sim.outputs import ResultFolder, RunDirectory

SPEC = preset_spec("logreg", (4,), 3)
PARAMS = dict(build_model(SPEC).named_parameters())
PUBLISHED = {"summary.json", "model.safetensors", "model.json", "curves.png", "metrics.jsonl"}


def _epochs():
    return [
        {"epoch": e, "test_accuracy": 0.5, "test_loss": 1.0, "train_loss": 1.1, "lr": 0.1}
        for e in (1, 2)
    ]


def _job(tmp_path):
    folder = JobFolder(tmp_path / "job")
    folder.open()
    folder.write_metrics(_epochs())
    folder.save_checkpoint({"epoch": 2})
    return folder


def _published(out, partial):
    assert not partial.exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["name"] == "t"
    assert load_file(out / "model.safetensors").keys() == PARAMS.keys()
    assert json.loads((out / "model.json").read_text())["input_shape"] == [4]


def test_both_folders_finish_through_the_one_shared_implementation():
    assert JobFolder.finish is RunDirectory.finish is ResultFolder.finish


def test_a_finished_job_is_published_without_its_checkpoint(tmp_path):
    folder = _job(tmp_path)
    out = folder.finish({"name": "t"}, _epochs(), PARAMS, SPEC)
    assert out == tmp_path / "job"
    assert {p.name for p in out.iterdir()} == PUBLISHED
    assert not (out / CHECKPOINT).exists()
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    _published(out, folder.partial)


def test_a_failed_plot_leaves_the_job_resumable(tmp_path, monkeypatch):
    folder = _job(tmp_path)

    def broken(*args, **kwargs):
        raise RuntimeError("no plot")

    monkeypatch.setattr("fedge.central.job_folder.plot_epochs", broken)
    with pytest.raises(RuntimeError):
        folder.finish({"name": "t"}, _epochs(), PARAMS, SPEC)
    assert folder.checkpoint.is_file() and not folder.out.exists()
    folder.close()
    again = JobFolder(folder.out)
    again.open(resume=True)
    again.close()


def test_a_finished_run_is_published_with_its_metrics_file_closed(tmp_path):
    folder = RunDirectory(tmp_path / "run")
    rounds = [
        {"round": r, "test_accuracy": 0.5, "test_loss": 1.0, "train_loss": 1.1} for r in (1, 2)
    ]
    for m in rounds:
        folder.append_metrics(m)
    out = folder.finish({"name": "t"}, rounds, PARAMS, SPEC)
    assert {p.name for p in out.iterdir()} == PUBLISHED
    assert folder._metrics.closed
    assert [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()] == rounds
    _published(out, folder.partial)
