"""Secure aggregation on a real server with real client processes: devices SIGKILLed after
sharing their keys drop out and the round sums exactly the survivors; the server's stored
messages reveal no device's update; a server SIGKILLed mid-protocol resumes the round;
hostile secure-aggregation requests get their 4xx and change nothing."""

import sqlite3
import sys
import time

import httpx
import numpy as np
import pytest
import torch
from conftest import (
    SECRET,
    experiment,
    records,
    round_records,
    start_clients,
    wait_for_clients,
    write_config,
)

from fedge.config import parse_config
from fedge.federation.wire import decode_model
from fedge.fl.local import LocalTraining, client_generator, train_client
from fedge.fl.types import ClientTask, flatten_by_name
from fedge.models.spec import build_model, fast_layout
from fedge.sim.build import make_strategy
from fedge.sim.experiment import prepare

# 6 devices is the smallest cohort whose neighbour graph is not complete (degree 4 of 5
# possible): SecAgg+, not SecAgg. Every device is a process that imports torch, so most
# tests keep the cohort at that; the dropout test runs the 10 the issue asks for.
DEVICES, MAX_WEIGHT = 6, 400


def step(devices):
    """The quantization step over [-1, 1]: L = (2^32 - 1) // devices levels, so that a
    sum of ``devices`` values is exact to ``devices`` steps per value."""
    return 2 / ((2**32 - 1) // devices)


def secure_experiment(name="secagg", rounds=1, devices=DEVICES, **secagg):
    data = experiment(name=name, rounds=rounds, over_selection=1.0, deadline_seconds=120.0)
    data["partition"]["num_clients"] = devices
    data["server"] = {"clients_per_round": devices}
    data["privacy"] = {
        "dp": "none",
        "secure_aggregation": {"max_weight": MAX_WEIGHT, "stage_seconds": 4.0, **secagg},
    }
    return data


def device_deltas(data, initial):
    """Each device's delta Δ_k (float64) and sample count after round 1 from ``initial``,
    recomputed here as its client trains (the same data, stream and local SGD)."""
    config = parse_config(data)
    devices = config.partition.num_clients
    fed = prepare(config)
    local = LocalTraining(**config.client.model_dump())
    strategy = make_strategy(config.strategy, num_clients=devices, local=local)
    net = fast_layout(build_model(fed.spec))
    start = flatten_by_name(initial).double()
    out = {}
    for k in range(devices):
        x, y = fed.clients.client(k)
        task = ClientTask(round=1, params=initial)
        gen = client_generator(config.seed, 1, k)
        update = train_client(net, strategy, task, x, y, local, gen, client_index=k)
        out[k] = (flatten_by_name(update.params).double() - start, len(y))
    return out


def contributions(data, initial):
    """Each device's ω_k·Δ_k and ω_k, as its client computes them."""
    out = {}
    for k, (delta, samples) in device_deltas(data, initial).items():
        w = min(samples, MAX_WEIGHT) / MAX_WEIGHT
        out[k] = (w * delta, w)
    return out


def model(state, version):
    path = state / f"tensors/versions/{version}/model.safetensors"
    return decode_model(path.read_bytes())[1]


def assert_model_sums(state, data, members, atol=0.0):
    """Version 1 = version 0 + Σ_members ω·Δ / Σ_members ω, to the quantization bound
    (beyond the float32 rounding of the stored model, and ``atol`` for devices whose
    update is recomputed here only to float precision)."""
    initial, got = model(state, 0), model(state, 1)
    parts = contributions(data, initial)
    total = sum(parts[k][0] for k in members)
    weight = sum(parts[k][1] for k in members)
    stored = flatten_by_name(got)
    moved = stored.double() - flatten_by_name(initial).double()
    # the server sums in float64 and stores float32: half an ulp of each stored value
    rounding = torch.from_numpy(np.spacing(stored.abs().numpy())).double() / 2
    error = ((moved - total / weight).abs() - rounding).max().item()
    assert error <= 2 * len(members) * step(len(parts)) / weight + atol, error
    others = [k for k in range(len(parts)) if k not in members]
    if others:  # and it is not the sum over everyone
        everyone = (total + sum(parts[k][0] for k in others)) / (
            weight + sum(parts[k][1] for k in others)
        )
        assert (moved - everyone).abs().max().item() > 1e-4
    return parts


def test_devices_killed_after_sharing_keys_drop_out_and_the_survivors_are_summed(
    federation, tmp_path
):
    devices, killed = 10, (0, 1, 2)  # 30 % of the cohort
    data = secure_experiment(devices=devices)
    server = federation(data)
    crash = {k: {"FEDGE_SECAGG_CRASH_AT": "masked"} for k in killed}
    clients = start_clients(server, tmp_path, count=devices, envs=crash)
    try:
        wait_for_clients([c for k, c in enumerate(clients) if k not in killed])
        for k in killed:
            assert clients[k].wait(timeout=30) == -9  # SIGKILLed before its masked input
    finally:
        _stop(clients)

    ended = round_records(server.state)
    assert ended[1]["status"] == "closed", ended
    secure = ended[1]["secure_aggregation"]
    assert (secure["advertised"], secure["summed"], secure["dropped"]) == (devices, 7, 3)
    assert secure["degree"] < devices - 1  # a sparse graph: SecAgg+
    assert_model_sums(server.state, data, [k for k in range(devices) if k not in killed])
    # the round's messages are deleted once it has ended
    assert records(server.state)["rows"]["secagg_messages"] == []


def _wait_for_stage(server, stage, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current = server.status().get("round") or {}
        if current.get("stage") == stage:
            return
        time.sleep(0.05)
    raise AssertionError(f"the round never reached stage {stage!r}: {server.status()}")


def _stored_masked(state):
    db = sqlite3.connect(f"file:{state / 'state.db'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT device, data FROM secagg_messages WHERE stage = 'masked'")
        return {device: np.frombuffer(data, dtype="<u4") for device, data in rows}
    finally:
        db.close()


def test_the_server_sees_only_masked_vectors_and_resumes_the_protocol_after_a_sigkill(
    federation, tmp_path
):
    data = secure_experiment(name="secagg-restart")
    server = federation(data)
    # two devices vanish before unmasking: the unmask stage waits for its deadline, in
    # which the server is killed; their masked inputs still count
    crash = {k: {"FEDGE_SECAGG_CRASH_AT": "unmask"} for k in (0, 1)}
    clients = start_clients(server, tmp_path, count=DEVICES, envs=crash)
    try:
        _restart_mid_protocol(server, clients, data)
    finally:
        _stop(clients)
    ended = round_records(server.state)
    assert ended[1]["status"] == "closed", ended
    assert ended[1]["secure_aggregation"]["summed"] == DEVICES
    assert_model_sums(server.state, data, list(range(DEVICES)))


def _stop(clients):
    for client in clients:
        if client.poll() is None:
            client.kill()
            client.wait()


def _restart_mid_protocol(server, clients, data):
    _wait_for_stage(server, "unmask")

    stored = _stored_masked(server.state)
    assert len(stored) == DEVICES
    parts = contributions(data, model(server.state, 0))
    codec_levels = (2**32 - 1) // DEVICES
    for device, masked in stored.items():
        # a masked vector decoded as if it were an update: nothing like any device's
        as_update = masked.astype(np.float64) * (2 / codec_levels) - 1
        for k, (contribution, _) in parts.items():
            plain = contribution.numpy()
            assert np.abs(as_update[: plain.size] - plain).max() > 0.5, (device, k)
            assert abs(np.corrcoef(as_update[: plain.size], plain)[0, 1]) < 0.2, (device, k)
        # and uniform-looking: the top 4 bits fill 16 bins evenly (chi-square, 15 dof)
        counts = np.bincount(masked >> 28, minlength=16)
        expected = masked.size / 16
        assert ((counts - expected) ** 2 / expected).sum() < 60
    log = server.log.read_text()
    assert "masked" not in log.replace("stage 'masked'", "")

    port = server.port
    server.kill()
    server.start(port=port)  # same port: the devices carry on
    wait_for_clients([c for k, c in enumerate(clients) if k not in (0, 1)])


@pytest.fixture
def secure_server(federation):
    return federation(secure_experiment(name="secagg-hostile", stage_seconds=60.0))


def _enroll(url):
    body = httpx.post(f"{url}/v1/devices", json={"secret": SECRET, "kind": "python"}).json()
    return {"Authorization": f"Bearer {body['token']}"}, body["device_id"]


def test_hostile_secure_aggregation_requests_are_refused_and_change_nothing(secure_server):
    url = secure_server.url
    auth, _ = _enroll(url)
    task = httpx.post(f"{url}/v1/checkin", headers=auth).json()
    assert task["status"] == "train" and task["secure_aggregation"]["degree"] >= 2
    base = f"{url}{task['secagg_url']}"
    before = records(secure_server.state)
    keys = {"channel": "A" * 44, "mask": "B" * 44}
    cases = [
        ("POST", f"{base}/advertise", {}, None, 401),  # no token
        ("POST", f"{base}/share", auth, {"shares": {}}, 409),  # not the open stage
        ("POST", f"{base}/unknown", auth, {}, 400),  # no such stage
        ("POST", f"{base}/advertise", auth, b"not json", 400),
        ("POST", f"{base}/advertise", auth, {"keys": keys}, 400),  # no model version
        ("POST", f"{base}/advertise", auth, {"model_version": 0, "keys": {"channel": "!"}}, 400),
        ("POST", f"{base}/advertise", auth, {"model_version": 0, "keys": "x"}, 400),
        ("POST", f"{base}/advertise", auth, {"model_version": 7, "keys": keys}, 409),  # stale
        ("POST", f"{url}/v1/rounds/2/secagg/advertise", auth, {"model_version": 0}, 409),
        ("POST", f"{url}/v1/rounds/1/updates", auth, b"x", 400),  # no idempotency key
        ("GET", f"{url}/v1/rounds/99/secagg", auth, None, 409),
        ("GET", base, {}, None, 401),
    ]
    for method, target, headers, body, status in cases:
        kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
        response = httpx.request(method, target, headers=headers, timeout=10, **kwargs)
        assert response.status_code == status, (target, body, response.text)
        assert "error" in response.json()
    assert records(secure_server.state) == before
    # a device without a task cannot advertise either
    stranger, _ = _enroll(url)
    good = {"model_version": 0, "keys": {"channel": "A" * 43 + "=", "mask": "B" * 43 + "="}}
    refused = httpx.post(f"{base}/advertise", headers=stranger, json=good)
    assert refused.status_code == 409 and "no task" in refused.json()["error"]
    # a raw update in a secure round is refused
    update = httpx.post(
        f"{url}/v1/rounds/1/updates",
        headers={**auth, "Idempotency-Key": "k1", "Content-Type": "application/octet-stream"},
        content=b"\0" * 16,
    )
    assert update.status_code == 409 and "secure aggregation" in update.json()["error"]
    # the same keys twice from one device: the retry is 200, other keys 409
    first = httpx.post(f"{base}/advertise", headers=auth, json=good)
    again = httpx.post(f"{base}/advertise", headers=auth, json=good)
    other = dict(good, keys={"channel": "C" * 43 + "=", "mask": "D" * 43 + "="})
    differs = httpx.post(f"{base}/advertise", headers=auth, json=other)
    assert (first.status_code, again.status_code, differs.status_code) == (201, 200, 409)


@pytest.mark.parametrize(
    ("privacy", "strategy", "match"),
    [
        (
            {"dp": "local", "clip_norm": 1.0, "noise_multiplier": 1.0},
            {"name": "scaffold"},
            "local differential privacy does not support scaffold",
        ),
        (
            {"dp": "local", "clip_norm": 1.0, "noise_multiplier": 1.0, "secure_aggregation": {}},
            None,
            "local DP under secure aggregation is distributed DP",
        ),
        (
            {"dp": "none", "secure_aggregation": {"max_weight": 10}},
            {"name": "fedavg", "aggregator": {"name": "median"}},
            "needs the mean aggregator",
        ),
        (
            {"dp": "none", "secure_aggregation": {}},
            None,
            "set privacy.secure_aggregation.max_weight",
        ),
    ],
)
def test_the_server_refuses_privacy_settings_it_cannot_honour(tmp_path, privacy, strategy, match):
    import subprocess

    data = experiment(name="refused", strategy=strategy)
    data["privacy"] = privacy
    config = write_config(tmp_path / "c.toml", data)
    result = subprocess.run(
        [sys.executable, "-m", "fedge", "server", str(config), "--state", str(tmp_path / "s")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert match in result.stderr


def test_keys_from_a_real_device_are_checked(secure_server):
    """A well-formed base64 string that is not a valid key pair is refused (409)."""
    url = secure_server.url
    auth, _ = _enroll(url)
    task = httpx.post(f"{url}/v1/checkin", headers=auth).json()
    same = {"model_version": 0, "keys": {"channel": "A" * 43 + "=", "mask": "A" * 43 + "="}}
    response = httpx.post(f"{url}{task['secagg_url']}/advertise", headers=auth, json=same)
    assert response.status_code == 409 and "must differ" in response.json()["error"]


def assert_sum_holds_the_planned_noise(state, data, clip, variance):
    """With distributed or local DP, FedAvg's step w1 = w0 + (noisy sum)/m: the noisy sum
    minus the clean sum of the devices' deltas clipped to S (recomputed here) is noise of
    ``variance`` per value (a chi-square test); → the noise."""
    from scipy.stats import chi2

    initial = model(state, 0)
    deltas = device_deltas(data, initial)
    devices = len(deltas)
    start = flatten_by_name(initial).double()
    clean = torch.zeros_like(start)
    for delta, _ in deltas.values():
        clean += delta * min(1.0, clip / float(delta.norm()))
    noisy = (flatten_by_name(model(state, 1)).double() - start) * devices
    noise = (noisy - clean).numpy()
    d = noise.size
    stat = float((noise**2).sum()) / variance
    assert chi2.ppf(1e-6, d) < stat < chi2.ppf(1 - 1e-6, d), (stat, d)
    return noise


def distributed_variance(secure):
    """The noise variance per value of a distributed-DP round's sum, in float units."""
    return secure["noise_variance"] / secure["scale"] ** 2


def test_with_distributed_dp_the_unmasked_sum_already_holds_the_clients_noise(federation, tmp_path):
    """3 real devices add Skellam noise before masking: the sum the server applies differs
    from the clean sum of the clipped deltas by noise of the planned variance, and by
    nothing more (the server adds none); ε is the Skellam mechanism's."""
    import math

    from dp_accounting import rdp

    from fedge.privacy.skellam import RDP_ORDERS

    clip, z, devices = 0.5, 1.0, 3
    data = experiment(name="secagg-distributed", rounds=1, over_selection=1.0)
    data["privacy"] = {
        "dp": "distributed",
        "clip_norm": clip,
        "noise_multiplier": z,
        "secure_aggregation": {"stage_seconds": 10.0},
    }
    server = federation(data)
    wait_for_clients(start_clients(server, tmp_path, count=devices))
    ended = round_records(server.state)
    assert ended[1]["status"] == "closed", ended
    secure = ended[1]["secure_aggregation"]
    assert secure["dp"] == "distributed" and secure["summed"] == devices

    noise = assert_sum_holds_the_planned_noise(
        server.state, data, clip, distributed_variance(secure)
    )
    d = noise.size
    # planned for 3 survivors (30% dropouts of 3 is none), all 3 survived: μ = (z·B)²,
    # and B is at least the scaled clipping norm
    assert secure["noise_variance"] == pytest.approx((z * secure["norm_bound"]) ** 2, rel=1e-9)
    assert secure["norm_bound"] >= secure["scale"] * clip
    # ε after the round: the Skellam bound on the integer sensitivities, no amplification
    l2 = 2 * secure["norm_bound"]
    l1 = min(math.sqrt(d) * l2, l2 * l2)
    mu = (z * secure["norm_bound"]) ** 2
    curve = [
        a * l2**2 / (2 * mu) + min(((2 * a - 1) * l2**2 + 6 * l1) / (4 * mu**2), 3 * l1 / (2 * mu))
        for a in RDP_ORDERS
    ]
    assert ended[1]["epsilon"] == pytest.approx(
        rdp.compute_epsilon(RDP_ORDERS, curve, 1e-5)[0], rel=1e-9
    )
