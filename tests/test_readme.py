"""The README's set-up commands are the ones CI runs and install what its examples need,
its examples are valid, and every config key is documented in docs/config.md. (Its other
commands run in tests/test_readme_commands.py.)"""

import re
import tomllib
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from fedge.central.train_config import TrainJobConfig
from fedge.config import ClientConfig, ExperimentConfig, load_config

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
CONFIG_DOC = (ROOT / "docs" / "config.md").read_text()


def _commands():
    return re.findall(r"```bash\n(apt-get update[^\n]*)\n```", README)


def test_readme_has_exactly_two_setup_commands():
    demo, tests = _commands()
    assert "fedge simulate examples/fmnist_demo.toml" in demo
    assert tests.endswith("python -m pytest && python -m pytest -m readme --dist load")


def test_ci_runs_the_readme_test_command():
    _, tests = _commands()
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert tests in ci


# compare_*.toml are comparison files, checked in tests/compare/test_config.py.
EXPERIMENTS = sorted(
    p for p in (ROOT / "examples").glob("*.toml") if not p.name.startswith("compare_")
)


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_example_configs_are_valid(path):
    cfg = load_config(path)
    assert cfg.rounds >= 1


def test_readme_states_the_client_batch_size_default():
    """The experiment file's [client] batch_size line says what omitting it gives."""
    (line,) = [x for x in README.splitlines() if re.match(r"batch_size = \d+ +#", x)][:1]
    assert f"(default {ClientConfig().batch_size})" in line, line
    assert "full batch" not in line


def test_the_demo_install_brings_scikit_learn_for_the_digits_examples():
    """The digits dataset (the quick examples, the centralized walkthrough) ships with
    scikit-learn: the README's install line must install it."""
    demo, _ = _commands()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (install,) = re.findall(r"pip install -e (\S+)", demo)
    extras = re.search(r"\[([\w,]+)\]", install)
    names = extras.group(1).split(",") if extras else []
    required = project["dependencies"] + [
        r for name in names for r in project["optional-dependencies"][name]
    ]
    assert 'name = "digits"' in (ROOT / "examples" / "digits_quick.toml").read_text()
    assert any(re.match(r"scikit-learn\b", r) for r in required), install


def _models(annotation) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models(arg)]


def config_keys(model: type[BaseModel], table: tuple[str, ...] = ()):
    """(table, key) of every key of a config schema; sub-tables recursed into, the
    variants of a table (e.g. each [data] name's) merged."""
    for name, field in model.model_fields.items():
        subs = _models(field.annotation)
        if subs:
            for sub in subs:
                yield from config_keys(sub, (*table, name))
        else:
            yield table, name


def documented_keys(text: str) -> dict[str, dict[tuple[str, ...], set[str]]]:
    """{part: {table: keys with a row}} of docs/config.md (``## part``, ``### [table]`` or
    ``### Top level``, rows starting with ``| `key` |``)."""
    parts: dict[str, dict[tuple[str, ...], set[str]]] = {}
    part = table = None
    for line in text.splitlines():
        if line.startswith("## "):
            part, table = line[3:].strip(), None
            parts[part] = {}
        elif line.startswith("### "):
            heading = line[4:].strip()
            table = () if heading == "Top level" else tuple(heading.strip("[]").split("."))
            parts[part][table] = set()
        elif (row := re.match(r"\| `(\w+)` \|", line)) and table is not None:
            parts[part][table].add(row.group(1))
    return parts


@pytest.mark.parametrize(
    ("schema", "part"),
    [(ExperimentConfig, "Experiment files"), (TrainJobConfig, "Training job files")],
)
def test_every_config_key_has_a_row_in_docs_config(schema, part):
    docs = documented_keys(CONFIG_DOC)
    keys = set(config_keys(schema))
    for table in {t for t, _ in keys}:
        # a training job's [data] and [model] are an experiment's
        rows = docs[part].get(table, docs["Experiment files"].get(table))
        assert rows is not None, f"docs/config.md has no [{'.'.join(table)}] in {part}"
        wanted = {k for t, k in keys if t == table}
        assert not wanted - rows, f"[{'.'.join(table)}] keys without a row: {wanted - rows}"
        if table in docs[part]:
            assert not rows - wanted, f"[{'.'.join(table)}] rows of no key: {rows - wanted}"


def test_the_readme_points_to_the_config_reference():
    assert "docs/config.md" in README
