"""Training jobs: single process, data-parallel over real gloo processes, checkpoints and
resume, registration, and the `fedge train` command."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fedge.central.datasets import DatasetArrays, DatasetStore
from fedge.central.job_folder import JobFolder
from fedge.central.jobs import prepare_job, run_job
from fedge.central.registry import ModelRegistry
from fedge.central.storage import LocalStore
from fedge.central.train import learning_rate
from fedge.central.train_config import TrainSection, load_train_config, parse_train_config
from fedge.cli.main import app
from fedge.data.digits import load_digits
from fedge.errors import ConfigError
from fedge.fl.local import evaluate
from fedge.models.spec import build_model

runner = CliRunner()


@pytest.fixture
def store_url(tmp_path):
    """A store holding digits@1 (train and test split)."""
    url = str(tmp_path / "store")
    DatasetStore(LocalStore(url)).upload("digits", DatasetArrays.from_data(load_digits()))
    return url


def job_config(store_url, **train):
    settings = {"epochs": 2, "batch_size": 64, "lr": 0.05, "momentum": 0.9} | train
    return parse_train_config(
        {
            "name": "digits-job",
            "store": store_url,
            "dataset": {"name": "digits"},
            "model": {"preset": "mlp", "hidden": [32]},
            "train": settings,
        }
    )


def test_learning_rate_is_scaled_linearly_and_warmed_up():
    t = TrainSection(lr=0.1, batch_size=512, reference_batch=128, warmup_epochs=2)
    assert t.peak_lr == pytest.approx(0.4)
    # 10 steps per epoch: a ramp from 0.1 to 0.4 over 20 steps, then 0.4.
    assert [learning_rate(s, 10, t) for s in (0, 10, 19, 20, 99)] == pytest.approx(
        [0.1, 0.25, 0.385, 0.4, 0.4]
    )
    assert learning_rate(0, 10, TrainSection(lr=0.1)) == 0.1  # no scaling, no warm-up


@pytest.mark.parametrize(
    ("input_shape", "units", "message"),
    [
        ([1, 8, 8], 3, r"outputs \[3\] but digits has 10 classes"),
        ([64], 10, r"expects input \[64\]"),
    ],
)
def test_a_spec_file_must_fit_the_data(tmp_path, input_shape, units, message):
    spec = tmp_path / "spec.json"
    layers = [{"type": "flatten"}, {"type": "dense", "units": units}]
    spec.write_text(json.dumps({"input_shape": input_shape, "layers": layers}))
    config = parse_train_config(
        {"data": {"name": "digits"}, "model": {"spec": str(spec)}, "train": {"epochs": 1}}
    )
    with pytest.raises(ConfigError, match=message):
        prepare_job(config)


def test_single_process_training_improves_accuracy(tmp_path):
    config = parse_train_config(
        {
            "data": {"name": "digits"},
            "model": {"preset": "mlp", "hidden": [32]},
            "train": {"epochs": 3, "batch_size": 32, "lr": 0.05},
        }
    )
    job = prepare_job(config)
    before = evaluate(build_model(job.spec), job.x_test, job.y_test)[1]
    result = run_job(job, tmp_path / "out")
    assert before < 0.3 < 0.85 < result.summary["final_test_accuracy"]
    assert result.summary["data_version"] is None and result.summary["workers"] == 1
    files = {p.name for p in result.out.iterdir()}
    assert files == {
        "config.toml", "metrics.jsonl", "summary.json", "curves.png", "model.safetensors",
        "model.json",
    }  # fmt: skip
    lines = [json.loads(line) for line in (result.out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2, 3]
    assert set(lines[0]) == {
        "epoch", "train_loss", "test_loss", "test_accuracy", "seconds", "train_seconds", "lr",
        "examples", "participants", "bytes_down", "bytes_up", "bytes_data", "samples_uploaded",
        "bytes_sent",
    }  # fmt: skip
    assert lines[-1]["train_loss"] < lines[0]["train_loss"]


def test_two_gloo_workers_give_the_weights_of_one_process(tmp_path, store_url):
    # Batch 100 over 1,437 examples: the shards are 50/50 and, in the last batch of 37,
    # 19/18, so this also checks that unequal shards are weighted as one batch is.
    config = job_config(
        store_url, batch_size=100, reference_batch=50, warmup_epochs=1, weight_decay=1e-3
    )
    job = prepare_job(config)
    one = run_job(job, tmp_path / "one")
    two = run_job(job, tmp_path / "two", workers=2)
    assert two.summary["workers"] == 2
    for name, value in one.params.items():
        torch.testing.assert_close(two.params[name], value, rtol=1e-5, atol=1e-5)
    assert one.params["dense1.weight"].abs().sum() > 0
    first = json.loads((tmp_path / "one" / "metrics.jsonl").read_text().splitlines()[-1])
    second = json.loads((tmp_path / "two" / "metrics.jsonl").read_text().splitlines()[-1])
    assert second["test_accuracy"] == pytest.approx(first["test_accuracy"], abs=1 / 360)
    assert second["train_loss"] == pytest.approx(first["train_loss"], rel=1e-5)


class _Interrupt:
    """Stops the job like Ctrl-C once ``after`` epochs have finished (and been saved)."""

    def __init__(self, after):
        self.after = after

    def epoch_started(self, epoch, steps):
        pass

    def step_finished(self, examples):
        pass

    def epoch_finished(self, metrics):
        if metrics["epoch"] == self.after:
            raise KeyboardInterrupt


def test_resume_gives_the_weights_of_an_uninterrupted_job(tmp_path, store_url):
    job = prepare_job(job_config(store_url, epochs=3, warmup_epochs=1.5, weight_decay=1e-3))
    whole = run_job(job, tmp_path / "whole")
    out = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        run_job(job, out, observers=[_Interrupt(after=2)])
    partial = tmp_path / "cut.partial"
    assert (partial / "checkpoint.pt").is_file() and not out.exists()
    with pytest.raises(ConfigError, match="--resume continues it"):
        run_job(job, out)
    resumed = run_job(job, out, resume=True)
    for name, value in whole.params.items():
        assert torch.equal(resumed.params[name], value), name
    assert resumed.summary["resumed_at_epoch"] == 2
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]
    assert not (out / "checkpoint.pt").exists() and not partial.exists()


def test_resume_refuses_a_changed_config(tmp_path, store_url):
    job = prepare_job(job_config(store_url, epochs=2))
    with pytest.raises(KeyboardInterrupt):
        run_job(job, tmp_path / "out", observers=[_Interrupt(after=1)])
    other = prepare_job(job_config(store_url, epochs=2, lr=0.2))
    with pytest.raises(ConfigError, match="differs from the checkpoint's in train"):
        run_job(other, tmp_path / "out", resume=True)
    with pytest.raises(ConfigError, match="nothing to resume"):
        run_job(job, tmp_path / "elsewhere", resume=True)


def test_a_version_without_test_split_gets_a_held_out_one(tmp_path):
    url = str(tmp_path / "store")
    rng = np.random.default_rng(0)
    x, y = rng.random((50, 3), dtype=np.float32), rng.integers(0, 2, 50)
    DatasetStore(LocalStore(url)).upload("tiny", DatasetArrays(x, y, 2))
    config = parse_train_config(
        {
            "store": url,
            "dataset": {"name": "tiny", "version": 1, "test_fraction": 0.2},
            "model": {"preset": "logreg"},
        }
    )
    job = prepare_job(config)
    assert (len(job.y_train), len(job.y_test), job.data_version) == (40, 10, "tiny@1")
    joined = torch.cat([job.x_train, job.x_test]).numpy()
    assert sorted(map(tuple, joined)) == sorted(map(tuple, x))


def write_job(tmp_path, store_url, **train):
    settings = {"epochs": 2, "batch_size": 64, "lr": 0.05} | train
    lines = [
        f'store = "{store_url}"',
        "[dataset]",
        'name = "digits"',
        "[model]",
        'preset = "mlp"',
        "hidden = [16]",
        "[train]",
        *(f"{key} = {value}" for key, value in settings.items()),
    ]
    path = tmp_path / "job.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_cli_train_registers_the_model_with_its_dataset_version(tmp_path, store_url):
    job = write_job(tmp_path, store_url)
    out = tmp_path / "run"
    result = runner.invoke(
        app, ["train", str(job), "--out", str(out), "--register", "digits-mlp", "--quiet"]
    )
    assert result.exit_code == 0, result.output
    assert "registered digits-mlp version 1 (data digits@1)" in result.output
    version = ModelRegistry(LocalStore(store_url)).get("digits-mlp")
    assert version.data_version == "digits@1"
    assert version.config["dataset"] == {"name": "digits", "version": 1, "test_fraction": 0.1}
    assert version.metrics["final_test_accuracy"] == pytest.approx(
        json.loads((out / "summary.json").read_text())["final_test_accuracy"]
    )
    assert "model.onnx" in version.files


def test_a_failed_job_leaves_the_registry_unchanged(tmp_path, store_url):
    job = write_job(tmp_path, store_url, lr=1e30)
    args = ["train", str(job), "--out", str(tmp_path / "run"), "--register", "m", "--quiet"]
    result = runner.invoke(app, [*args, "--workers", "2"])
    assert result.exit_code == 10, result.output
    assert "error: training diverged in epoch 1" in result.output
    assert ModelRegistry(LocalStore(store_url)).list_models() == []
    assert not (tmp_path / "run").exists()


def test_cli_reports_bad_jobs_in_one_line(tmp_path, store_url):
    job = write_job(tmp_path, store_url)
    result = runner.invoke(app, ["train", str(job), "--set", "dataset.version=9", "--quiet"])
    assert result.exit_code == 3
    assert "error: dataset 'digits' has no version 9 (versions: 1)" in result.output
    result = runner.invoke(app, ["train", str(job), "--set", "data.name=digits"])
    assert result.exit_code == 2
    assert "exactly one of [dataset] (from the store) and [data]" in result.output
    result = runner.invoke(app, ["train", str(job), "--register", "bad/name"])
    assert result.exit_code == 7


def test_a_job_resumed_on_two_workers_matches_the_uninterrupted_one(tmp_path, store_url):
    job = prepare_job(job_config(store_url, epochs=2, batch_size=100, weight_decay=1e-3))
    whole = run_job(job, tmp_path / "whole")
    with pytest.raises(KeyboardInterrupt):
        run_job(job, tmp_path / "cut", observers=[_Interrupt(after=1)])
    resumed = run_job(job, tmp_path / "cut", resume=True, workers=2)
    assert (resumed.summary["workers"], resumed.summary["resumed_at_epoch"]) == (2, 1)
    for name, value in whole.params.items():
        torch.testing.assert_close(resumed.params[name], value, rtol=1e-5, atol=1e-5)


def test_processes_joining_through_the_environment_train_together(tmp_path, store_url, monkeypatch):
    """What `torchrun` or hand-set variables on several machines do, here on loopback:
    rank 1 is a `fedge train` process, rank 0 runs in this one."""
    import os
    import subprocess
    import sys

    from fedge.central.ddp import free_port
    from fedge.central.jobs import run_env_job

    job = write_job(tmp_path, store_url, batch_size=100)
    out = tmp_path / "env"
    world = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2"}
    world |= {"GLOO_SOCKET_IFNAME": "lo", "FEDGE_DIST_TIMEOUT": "60"}
    rank1 = subprocess.Popen(
        [sys.executable, "-m", "fedge", "train", str(job), "--out", str(out), "--quiet"],
        env=os.environ | world | {"RANK": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        for name, value in (world | {"RANK": "0"}).items():
            monkeypatch.setenv(name, value)
        together = run_env_job(prepare_job(load_train_config(job)), out)
    finally:
        output = rank1.communicate(timeout=120)[0]
    assert rank1.returncode == 0, output
    assert output == ""  # rank 1 neither writes nor prints
    for name in world | {"RANK": 0}:
        monkeypatch.delenv(name)
    alone = run_job(prepare_job(load_train_config(job)), tmp_path / "alone")
    assert together.summary["workers"] == 2
    for name, value in alone.params.items():
        torch.testing.assert_close(together.params[name], value, rtol=1e-5, atol=1e-5)


def _parents():
    """Process id to parent process id, for every process (from /proc)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return parents


def _descendants(pid):
    """The processes below ``pid``: children, grandchildren, ..."""
    parents, found, frontier = _parents(), set(), {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _running(pid):
    """Whether ``pid`` is a process that has not exited (a zombie has)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_killed_job_takes_its_workers_along_and_a_held_folder_is_refused(tmp_path, store_url):
    job = write_job(tmp_path, store_url, epochs=100_000, batch_size=16)
    out, log = tmp_path / "run", tmp_path / "main.log"
    train = [sys.executable, "-m", "fedge", "train", str(job), "--out", str(out), "--quiet"]
    env = os.environ | {"FEDGE_DIST_TIMEOUT": "60"}
    with log.open("w") as f:
        main = subprocess.Popen([*train, "--workers", "2"], stdout=f, stderr=f, env=env)
    below = set()
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "run.partial" / "checkpoint.pt").exists():
            assert main.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the job finished no epoch in 120 s"
            time.sleep(0.1)
        below = _descendants(main.pid)  # the two workers (and the fork server)
        assert len(below) >= 2

        # While the job runs, a second one in its folder is refused in one line.
        second = subprocess.run(
            [*train, "--resume"], capture_output=True, text=True, timeout=120, env=env
        )
        output = second.stdout + second.stderr
        assert second.returncode == ConfigError.exit_code, output
        assert f"{out} is in use by another training job (pid {main.pid})" in output
        assert "Traceback" not in output

        main.send_signal(signal.SIGKILL)
        main.wait(timeout=10)
        deadline = time.monotonic() + 10
        while alive := sorted(filter(_running, below)):
            assert time.monotonic() < deadline, f"processes {alive} outlived the killed job"
            time.sleep(0.05)
    finally:
        if main.poll() is None:
            main.kill()
            main.wait()
        for pid in filter(_running, below):  # only processes this test started
            os.kill(pid, signal.SIGKILL)
    # The lock went with the job's last process: the folder can be resumed now.
    folder = JobFolder(out)
    folder.open(resume=True)
    folder.close()
