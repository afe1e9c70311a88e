"""The round engine: selection, admission, closing rules, and aggregation checked against
numbers computed by hand."""

import math

import pytest
import torch

from fedge.errors import ConfigError, StaleUpdate, UpdateRejected
from fedge.fl.rounds import RoundCoordinator, RoundPolicy, RoundStatus, RoundTally
from fedge.fl.strategy import FedAvg, Scaffold
from fedge.fl.types import ClientUpdate


def update(device, w, n, **extras):
    return ClientUpdate(
        client=device,
        params={"w": torch.tensor(w)},
        num_samples=n,
        num_steps=1,
        metrics={"train_loss": 1.0},
        extras=extras,
    )


def test_policy_sizes_and_bounds():
    assert RoundPolicy(target=10, over_selection=1.3).selected == 13
    assert RoundPolicy(target=3, over_selection=1.3).selected == 4  # ceil(3.9)
    assert RoundPolicy(target=5).selected == 5
    assert RoundPolicy(target=5).min_updates == 5
    assert RoundPolicy(target=5, quorum=2).min_updates == 2
    for bad in (
        {"target": 0},
        {"target": 3, "over_selection": 0.9},
        {"target": 3, "quorum": 4},
        {"target": 3, "deadline": 0},
        {"target": 3, "max_samples": 0},
    ):
        with pytest.raises(ConfigError):
            RoundPolicy(**bad)


def test_selection_hands_out_at_most_the_over_selected_count():
    coordinator = RoundCoordinator(
        FedAvg(),
        FedAvg().init({"w": torch.zeros(2)}),
        RoundPolicy(target=2, over_selection=1.5, deadline=10.0),
        rounds=5,
    )
    r = coordinator.open(1)
    assert r.deadline is None  # the clock starts with the first task
    assert r.assign("a", now=100.0) and r.assign("b", now=101.0) and r.assign("c", now=102.0)
    assert not r.assign("d", now=103.0)
    assert r.assign("a", now=104.0)  # a device asking again keeps its task
    assert r.deadline == 110.0 and r.seconds_left(105.0) == 5.0
    assert list(r.assigned) == ["a", "b", "c"]


def test_admission_rules():
    coordinator = RoundCoordinator(
        FedAvg(), FedAvg().init({"w": torch.zeros(2)}), RoundPolicy(target=2), rounds=5
    )
    r = coordinator.open(4)
    r.assign("a", 0.0)
    with pytest.raises(StaleUpdate, match="round 3"):
        r.admit("a", 3, 0, "k")
    with pytest.raises(StaleUpdate, match="model version 1"):
        r.admit("a", 4, 1, "k")
    with pytest.raises(StaleUpdate, match="no task"):
        r.admit("b", 4, 0, "k")
    assert r.admit("a", 4, 0, "k") is True
    r.accept("a", "k")
    assert r.admit("a", 4, 0, "k") is False  # the same upload again
    with pytest.raises(StaleUpdate, match="already reported"):
        r.admit("a", 4, 0, "other")
    r.status = RoundStatus.CLOSED
    r.assign("c", 0.0)
    with pytest.raises(StaleUpdate, match="closed"):
        r.admit("c", 4, 0, "k")


def test_a_round_closes_on_target_or_quorum_at_the_deadline_else_is_abandoned():
    policy = RoundPolicy(target=3, quorum=2, deadline=10.0)
    coordinator = RoundCoordinator(FedAvg(), FedAvg().init({"w": torch.zeros(1)}), policy, rounds=9)
    r = coordinator.open(1)
    for device in "abcd":
        r.assign(device, 0.0)
    r.accept("a", "k")
    assert r.due(5.0) is None
    assert r.due(10.0) is RoundStatus.ABANDONED  # 1 < quorum 2
    r.accept("b", "k")
    assert r.due(5.0) is None
    assert r.due(10.0) is RoundStatus.CLOSED
    r.accept("c", "k")
    assert r.due(0.5) is RoundStatus.CLOSED  # target met before the deadline


def test_close_is_fedavg_by_hand_and_skips_invalid_updates():
    coordinator = RoundCoordinator(
        FedAvg(), FedAvg().init({"w": torch.tensor([1.0, 1.0])}), RoundPolicy(target=3), rounds=2
    )
    coordinator.open(1)
    tally = RoundTally()
    state = coordinator.close(
        [
            update("a", [3.0, 1.0], 10),
            update("b", [math.nan, 0.0], 99),
            update("c", [0.0, 5.0], 30),
        ],
        tally,
    )
    # (10·[3, 1] + 30·[0, 5]) / 40 = [0.75, 4.0]
    assert state.params["w"].tolist() == [0.75, 4.0]
    assert state.rounds_completed == 1 and coordinator.state is state
    assert (tally.clients, tally.rejected, tally.samples, tally.devices) == (2, 1, 40, ["a", "c"])
    assert coordinator.round.status is RoundStatus.CLOSED


def test_rebuilding_a_round_from_stored_updates_gives_the_same_state():
    strategy = Scaffold(num_clients=4)
    start = strategy.init({"w": torch.tensor([0.5, -0.5])})
    stored = [
        update("a", [1.0, 0.0], 3, delta_c={"w": torch.tensor([0.1, 0.2])}),
        update("b", [0.0, 2.0], 1, delta_c={"w": torch.tensor([-0.3, 0.4])}),
    ]
    first = RoundCoordinator(strategy, start, RoundPolicy(target=2), rounds=3)
    first.open(1)
    after = first.close(iter(stored))
    again = RoundCoordinator(strategy, start, RoundPolicy(target=2), rounds=3)  # a restart
    again.open(1)
    rebuilt = again.close(iter(stored))
    assert torch.equal(after.params["w"], rebuilt.params["w"])
    assert torch.equal(after.extras["c"]["w"], rebuilt.extras["c"]["w"])
    # By hand: w = [0.5, -0.5] + (3·[0.5, 0.5] + 1·[-0.5, 2.5]) / 4 = [0.75, 0.5];
    # c = 0 + (Δc_a + Δc_b) / N = [-0.2, 0.6] / 4 = [-0.05, 0.15]
    torch.testing.assert_close(after.params["w"], torch.tensor([0.75, 0.5]))
    torch.testing.assert_close(after.extras["c"]["w"], torch.tensor([-0.05, 0.15]))


def test_abandoning_keeps_the_model():
    coordinator = RoundCoordinator(
        FedAvg(), FedAvg().init({"w": torch.ones(1)}), RoundPolicy(target=1), rounds=1
    )
    before = coordinator.state
    coordinator.open(1)
    coordinator.abandon()
    assert coordinator.state is before and coordinator.round.status is RoundStatus.ABANDONED
    assert not coordinator.finished


def test_check_validates_extras_and_counts():
    strategy = Scaffold(num_clients=2)
    coordinator = RoundCoordinator(
        strategy,
        strategy.init({"w": torch.zeros(2)}),
        RoundPolicy(target=1, max_samples=100),
        rounds=1,
    )
    good = {"w": torch.zeros(2)}
    coordinator.check(update("a", [1.0, 1.0], 5, delta_c=good))
    bad = [
        (update("a", [1.0, 1.0], 5, delta_c={"w": torch.tensor([0.0, math.inf])}), "NaN or Inf"),
        (update("a", [1.0, 1.0], 5, delta_c={"w": torch.zeros(3)}), "shape"),
        (update("a", [1.0, 1.0], 5), "beyond its weights"),
        (update("a", [1.0, 1.0], 5, delta_c=good, other=good), "beyond its weights"),
        (update("a", [1.0, 1.0], 101, delta_c=good), "exceeds the limit of 100"),
        (update("a", [1.0, 1.0], 0, delta_c=good), ">= 1"),
    ]
    for candidate, message in bad:
        with pytest.raises(UpdateRejected, match=message):
            coordinator.check(candidate)
    nan_metric = ClientUpdate(
        client="a",
        params={"w": torch.zeros(2)},
        num_samples=1,
        num_steps=1,
        metrics={"train_loss": math.nan},
        extras={"delta_c": good},
    )
    with pytest.raises(UpdateRejected, match="finite"):
        coordinator.check(nan_metric)
