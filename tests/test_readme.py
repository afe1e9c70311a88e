"""The README's set-up commands are the ones CI runs, and its examples are valid."""

import re
from pathlib import Path

import pytest

from fedge.config import ClientConfig, load_config

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _commands():
    return re.findall(r"```bash\n(apt-get update[^\n]*)\n```", README)


def test_readme_has_exactly_two_setup_commands():
    demo, tests = _commands()
    assert "fedge simulate examples/fmnist_demo.toml" in demo
    assert tests.endswith("python -m pytest")


def test_ci_runs_the_readme_test_command():
    _, tests = _commands()
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert tests in ci


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.toml")), ids=lambda p: p.name)
def test_example_configs_are_valid(path):
    cfg = load_config(path)
    assert cfg.rounds >= 1


def test_readme_states_the_client_batch_size_default():
    """The experiment file's [client] batch_size line says what omitting it gives."""
    (line,) = [x for x in README.splitlines() if re.match(r"batch_size = \d+ +#", x)][:1]
    assert f"(default {ClientConfig().batch_size})" in line, line
    assert "full batch" not in line
