"""The comparison file: budgets, arms, expansion of batch sizes, overrides; the example."""

from pathlib import Path

import pytest

from fedge.compare.config import (
    CentralArm,
    DataParallelArm,
    FederatedArm,
    load_compare_config,
    parse_compare_config,
)
from fedge.compare.runner import experiment_config, job_config
from fedge.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def base(**changes):
    cfg = {
        "name": "c",
        "dataset": {"name": "digits"},
        "model": {"preset": "mlp"},
        "budget": {"epochs": 2},
        "arms": [
            {"name": "central", "kind": "central", "train": {"batch_size": 32}},
            {"name": "big", "kind": "data_parallel", "batch_sizes": [64, 256],
             "train": {"lr": 0.1, "reference_batch": 32}},
            {"name": "fl", "kind": "federated",
             "partition": {"scheme": "label_k", "num_clients": 5, "k": 2},
             "strategy": {"name": "fedyogi"}},
        ],
    }  # fmt: skip
    cfg.update(changes)
    return cfg


def test_batch_sizes_expand_into_one_arm_each():
    arms = parse_compare_config(base()).expanded_arms()
    assert [a.name for a in arms] == ["central", "big-b64", "big-b256", "fl"]
    assert [type(a) for a in arms] == [CentralArm, DataParallelArm, DataParallelArm, FederatedArm]
    assert [a.train.batch_size for a in arms[1:3]] == [64, 256]
    assert arms[1].workers == 2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"budget": {"epochs": 2, "seconds": 10}}, "exactly one of budget.epochs"),
        ({"budget": {}}, "exactly one of budget.epochs"),
        (
            {"arms": [{"name": "a", "kind": "central", "train": {"epochs": 3}}]},
            "train.epochs is set by the comparison",
        ),
        (
            {"arms": [{"name": "a", "kind": "central", "train": {"seed": 3}}]},
            "train.seed is set by the comparison",
        ),
        (
            {"arms": [{"name": "a", "kind": "central", "batch_sizes": [8],
                       "train": {"batch_size": 8}}]},
            "batch_size or batch_sizes",
        ),
        (
            {"arms": [{"name": "a-b8", "kind": "central"},
                      {"name": "a", "kind": "central", "batch_sizes": [8]}]},
            "a-b8 twice",
        ),
        ({"arms": [{"name": "../x", "kind": "central"}]}, "names the arm's folder"),
        ({"arms": [{"name": "a", "kind": "data_parallel", "workers": 1}]}, "workers"),
        ({"arms": [{"name": "a", "kind": "mystery"}]}, "unknown choice 'mystery'"),
        ({"arms": []}, "arms"),
    ],
)  # fmt: skip
def test_bad_comparisons_are_one_line_config_errors(change, message):
    with pytest.raises(ConfigError, match=message):
        parse_compare_config(base(**change))


def test_overrides_reach_an_arm_by_name_or_position(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(
        'dataset = {name = "d"}\nmodel = {preset = "mlp"}\nbudget = {epochs = 1}\n'
        '[[arms]]\nname = "one"\nkind = "central"\n'
        '[[arms]]\nname = "two"\nkind = "central"\n'
    )
    cfg = load_compare_config(path, ["arms.two.train.lr=0.5", "arms.0.train.momentum=0.5"])
    assert (cfg.arms[1].train.lr, cfg.arms[0].train.momentum) == (0.5, 0.5)
    with pytest.raises(ConfigError, match="there is no arm 'three'"):
        load_compare_config(path, ["arms.three.train.lr=0.5"])


def test_the_budget_and_seed_reach_every_arm():
    cfg = parse_compare_config(base(seed=7, threads=1, store="somewhere"))
    central, big, _, fl = cfg.expanded_arms()
    j = job_config(cfg, central)
    assert (j.train.epochs, j.train.seed, j.train.threads, j.train.max_seconds) == (2, 7, 1, None)
    assert j.dataset is not None and j.dataset.name == "digits" and j.store == "somewhere"
    assert job_config(cfg, big).train.threads == 1  # data-parallel: one thread per worker
    e = experiment_config(cfg, fl, rounds=5)
    assert (e.rounds, e.seed, e.threads, e.data.name, e.strategy.name) == (
        5, 7, 1, "store", "fedyogi")  # fmt: skip
    timed = parse_compare_config(base(budget={"seconds": 30}))
    train = job_config(timed, timed.expanded_arms()[0]).train
    assert (train.max_seconds, train.epochs) == (30, 1000)
    assert experiment_config(timed, timed.expanded_arms()[-1], 9).max_seconds == 30


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("compare_*.toml")), ids=str)
def test_example_comparisons_are_valid(path):
    cfg = load_compare_config(path)
    kinds = {arm.kind for arm in cfg.expanded_arms()}
    assert kinds == {"central", "data_parallel", "federated"}
