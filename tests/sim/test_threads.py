"""A simulation whose config leaves ``threads`` unset runs on PyTorch's default thread count
for a fresh process, not on whatever an earlier ``torch.set_num_threads`` left."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fedge.sim.experiment import prepare
from fedge.sim.threads import default_threads

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_the_default_is_pytorchs_own_in_a_fresh_process():
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    code = (
        "import torch; from fedge.sim.threads import default_threads; "
        "print(torch.get_num_threads(), default_threads())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    torch_default, ours = out.stdout.split()
    assert ours == torch_default, out.stderr


def test_the_environment_wins(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert default_threads() == 3


def test_a_leftover_thread_count_is_not_inherited(digits, restore_threads):
    if default_threads() == 1:
        pytest.skip("one core: a leftover single thread is the default")
    torch.set_num_threads(1)  # as a one-thread baseline or a centralized job leaves it
    prepare(digits())
    assert torch.get_num_threads() == default_threads()


def test_the_configs_threads_win(digits, restore_threads):
    prepare(digits(threads=1))
    assert torch.get_num_threads() == 1
