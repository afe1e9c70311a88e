"""Rounds under a deadline: over-selection, a quorum, stragglers told the round is
closed, and an abandoned round that leaves the model as it was."""

import time

from conftest import experiment, finish, make_devices, records

from fedge.config import parse_config


def wait_for(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_quorum_at_the_deadline_closes_and_a_straggler_is_told_too_late(federation, tmp_path):
    data = experiment(
        name="deadline",
        rounds=2,
        quorum=2,
        deadline_seconds=5.0,
        over_selection=1.0,
        min_poll_seconds=0.05,
    )
    data["server"] = {"clients_per_round": 2}
    server = federation(data)
    d0, d1, _ = make_devices(server, tmp_path, parse_config(data))
    # Two tasks for a target of 2 (no over-selection). d1 holds one but does not report
    # before the deadline (1 update < quorum 2).
    d1._upload_pending = lambda identity: None
    assert d1.step()[0] == "trained"
    del d1._upload_pending
    assert d0.step()[0] == "trained"
    wait_for(lambda: server.status()["round"]["number"] == 2)
    status = server.status()
    assert status["model_version"] == 0  # abandoned: the model did not change
    assert status["history"][0]["status"] == "abandoned"
    assert status["history"][0]["dropouts"] == 1
    versions = [row for row in records(server.state)["rows"]["versions"]]
    assert len(versions) == 1

    # The straggler's update arrives for the abandoned round: refused (409), dropped.
    assert d1.step()[0] == "uploaded" and d1.accepted == 0
    assert not (d1.state_dir / "pending.json").exists()

    # Round 2: two devices report in time and the round closes on its target.
    assert d0.step()[0] == "trained" and d1.step()[0] == "trained"
    wait_for(lambda: server.status()["model_version"] == 1)
    assert server.status()["history"][-1]["participants"] == 2


def test_a_round_with_quorum_closes_at_the_deadline(federation, tmp_path):
    data = experiment(name="quorum", rounds=1, quorum=2, deadline_seconds=2.0)
    server = federation(data)
    d0, d1, d2 = make_devices(server, tmp_path, parse_config(data))
    assert d0.step()[0] == "trained" and d1.step()[0] == "trained"
    d2._upload_pending = lambda identity: None  # a device that vanishes mid-round
    assert d2.step()[0] == "trained"
    del d2._upload_pending
    assert finish(d0) == "finished"  # closed at the deadline with 2 of 3
    last = server.status()["history"][-1]
    assert (last["status"], last["participants"], last["dropouts"]) == ("closed", 2, 1)
    assert d2.step()[0] == "uploaded" and d2.accepted == 0  # too late


def test_over_selected_devices_past_the_target_are_told_the_round_closed(federation, tmp_path):
    data = experiment(name="over", rounds=1, over_selection=2.0)
    data["server"] = {"clients_per_round": 1}
    server = federation(data)
    d0, d1, d2 = make_devices(server, tmp_path, parse_config(data))
    for device in (d2, d0):  # 2 tasks for 1 wanted update; neither has uploaded yet
        device._upload_pending = lambda identity: None
        assert device.step()[0] == "trained"
        del device._upload_pending
    assert server.status()["round"]["selected"] == 2
    assert d1.step()[0] == "wait"  # no third task
    assert d0.step()[0] == "uploaded" and d0.accepted == 1
    assert finish(d1) == "finished"  # closed on its target
    last = server.status()["history"][-1]
    assert (last["participants"], last["dropouts"], last["tasks"]) == (1, 1, 2)
    assert d2.step()[0] == "uploaded" and d2.accepted == 0  # 409: the round has closed
    assert server.status()["rejections"][-1]["status"] == 409
