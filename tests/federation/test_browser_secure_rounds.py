"""Browser devices in private rounds on a real server: the summands a browser adds to the
secure sum equal a Python device's, a browser and Python devices (one SIGKILLed after
sharing its keys) complete a SecAgg+ round with exactly the survivors' sum, a browser adds
its share of distributed DP's noise, and under local DP noises its own update. The
protocol itself against Python's is in ``test_browser_secagg.py``, the noise samplers in
``test_browser_skellam.py``."""

import numpy as np
import pytest
import torch
from conftest import SECRET, experiment, round_records, start_clients, wait_for_clients
from test_browser_client import (  # noqa: F401
    b64,
    browser,
    chromium,
    join,
    origin,
    page,
    partition,
    run_js,
    text_of,
    unb64,
    wait_for,
)

from fedge.federation.wire import encode_model, encode_update
from fedge.fl.strategy import FedAvg, Scaffold
from fedge.fl.types import ClientTask, ClientUpdate, flatten_by_name

SECURE_PARTS = """
const [planJson, initialFile, updateFile, strategy, training] = args;
const { parsePlan } = await import("/client/secagg.js");
const initial = st.decodeModel(b64(initialFile)).params;
const update = st.decodeUpdate(b64(updateFile));
const got = train.secureParts(
  parsePlan(planJson), train.clientHalf(strategy), training, initial, update);
const parts = {};
for (const [name, values] of Object.entries(got.parts))
  parts[name] = to64(new Uint8Array(values.buffer));
return { parts, capped: got.capped };
"""


@pytest.mark.parametrize(
    ("name", "num_samples", "num_steps"),
    [
        ("fedavg", 30, 5),  # ω = 30/50
        ("fedavg", 80, 5),  # more samples than max_weight: ω = 1, counted as clipped
        ("fednova", 30, 7),  # ω·Δ/a_k with momentum 0.9, and ω·a_k
        ("fednova", 30, 0),  # no step: zeros
        ("scaffold", 30, 5),  # and the unweighted Δc_i
        ("dp-fits", 30, 5),  # a DP round: Δ clipped to C, weight 1, and whether it fitted
        ("dp-clipped", 30, 5),
    ],
)
def test_the_browsers_secure_summands_equal_the_python_clients(
    page,
    browser,
    name,
    num_samples,
    num_steps,
):
    """What a browser adds to a secure round's sum, before quantization, is what
    ``fedge.privacy.secagg.contribution`` computes for a Python device."""
    from fedge.fl.strategy import FedNova
    from fedge.fl.types import ServerState
    from fedge.privacy.dpfedavg import clipped_parts
    from fedge.privacy.secagg import SecAggSettings, plan_round

    gen = torch.Generator().manual_seed(3)
    initial = {
        "b.weight": torch.randn(3, 4, generator=gen),
        "a.bias": torch.randn(5, generator=gen),
    }
    params = {k: v + 0.05 * torch.randn(v.shape, generator=gen) for k, v in initial.items()}
    extras = {}
    strategy = {"fedavg": FedAvg(), "fednova": FedNova(momentum=0.9)}.get(name, FedAvg())
    config = {"name": name if name in ("fedavg", "fednova") else "fedavg"}
    if name == "scaffold":
        strategy, config = Scaffold(num_clients=4), {"name": "scaffold"}
        extras = {"delta_c": {k: torch.randn(v.shape, generator=gen) for k, v in initial.items()}}
    update = ClientUpdate(
        client="d", params=params, num_samples=num_samples, num_steps=num_steps, extras=extras
    )
    settings = SecAggSettings(max_weight=50)
    plan = plan_round(
        strategy, ServerState(params=initial), settings, cohort=6, context=b"r1"
    ).to_json()
    task = ClientTask(round=1, params=initial)
    if name.startswith("dp"):
        clip = 10.0 if name == "dp-fits" else 0.05
        length = sum(v.numel() for v in initial.values())
        plan |= {
            "clip_norm": clip,
            "segments": [["delta", length, -clip, clip], ["unclipped", 1, 0.0, 1.0]],
            "weighting": "uniform",
        }
        expected = clipped_parts(task, update, clip, count_unclipped=True)
    else:
        weight = min(num_samples, 50) / 50
        expected = strategy.secure_parts(task, update, weight)
    out = run_js(
        browser,
        SECURE_PARTS,
        plan,
        b64(encode_model(initial, {}, model_version=0)),
        b64(encode_update(update, round=1, model_version=0)),
        config,
        {"momentum": 0.9},
    )
    got = {k: np.frombuffer(unb64(v), dtype=np.float64) for k, v in out["parts"].items()}
    assert got.keys() == expected.keys()
    for k, v in expected.items():
        np.testing.assert_allclose(got[k], v.numpy(), rtol=1e-12, atol=1e-15, err_msg=k)
    assert out["capped"] == (num_samples > 50 and not name.startswith("dp"))
    if name == "dp-clipped":
        assert got["unclipped"][0] == 0 and np.linalg.norm(got["delta"]) == pytest.approx(0.05)


def test_a_browser_takes_part_in_a_secure_round_with_python_devices(
    federation,
    browser,
    tmp_path,
):
    """SecAgg+ on a real server with one browser and five `fedge client` processes, one of
    them SIGKILLed after sharing its keys: the round sums exactly the five survivors'
    contributions, the browser's among them, and the server never saw its update. Full-batch
    local SGD, so that the browser's update (its own shuffle, TensorFlow.js's float32) can
    be recomputed here to float32 precision."""
    from test_secure_aggregation import assert_model_sums, model, secure_experiment

    devices, mine, killed = 6, 5, 0
    data = secure_experiment(name="browser-secure", devices=devices, stage_seconds=8.0)
    data["client"] = {**data["client"], "batch_size": 10_000, "epochs": 2}
    server = federation(data)
    x, y = partition(server.config, mine)
    np.savez(tmp_path / "mine.npz", x=x, y=y)
    crash = {killed: {"FEDGE_SECAGG_CRASH_AT": "masked"}}
    clients = start_clients(server, tmp_path / "clients", count=devices - 1, envs=crash)
    join(browser, server.url, tmp_path / "mine.npz")
    try:
        wait_for(browser, "status", lambda text: text.startswith("finished"), timeout=240)
        wait_for_clients([c for k, c in enumerate(clients) if k != killed])
        assert clients[killed].wait(timeout=30) == -9
    finally:
        for client in clients:
            if client.poll() is None:
                client.kill()
    assert text_of(browser, "accepted") == "1"
    assert text_of(browser, "error") == ""
    assert "closed with this device's update in the sum" in text_of(browser, "log")
    ended = round_records(server.state)
    assert ended[1]["status"] == "closed", ended
    secure = ended[1]["secure_aggregation"]
    assert (secure["advertised"], secure["summed"], secure["dropped"]) == (devices, 5, 1)
    members = [k for k in range(devices) if k != killed]
    # TensorFlow.js trains in float32 like PyTorch, in another order: allow 1e-6 (here the
    # sum matched to the quantization bound with no allowance at all)
    parts = assert_model_sums(server.state, data, members, atol=1e-6)
    # and the browser's contribution is in the sum: without it the model would differ
    initial = flatten_by_name(model(server.state, 0)).double()
    moved = flatten_by_name(model(server.state, 1)).double() - initial
    others = [k for k in members if k != mine]
    without = sum(parts[k][0] for k in others) / sum(parts[k][1] for k in others)
    assert (moved - without).abs().max().item() > 1e-3


def one_round_with_a_browser(federation, browser, tmp_path, data, devices):
    """Round 1 of ``data`` (full-batch local SGD, so that the browser's update can be
    recomputed here) with the browser as the last of ``devices`` devices and `fedge client`
    processes as the others; → the server, once every device has finished."""
    data["client"] = {**data["client"], "batch_size": 10_000, "epochs": 2}
    server = federation(data)
    x, y = partition(server.config, devices - 1)
    np.savez(tmp_path / "mine.npz", x=x, y=y)
    clients = start_clients(server, tmp_path / "clients", count=devices - 1)
    join(browser, server.url, tmp_path / "mine.npz")
    wait_for(browser, "status", lambda text: text.startswith("finished"), timeout=240)
    wait_for_clients(clients)
    assert text_of(browser, "accepted") == "1" and text_of(browser, "error") == ""
    return server


def test_a_browser_adds_its_share_of_distributed_dp_noise(
    federation,
    browser,
    tmp_path,
):
    """Distributed DP with one browser and two `fedge client` processes: the sum the server
    applies is the clean sum of the three clipped deltas (the browser's recomputed here;
    full-batch SGD) plus noise of the full planned variance: a browser that added none would
    leave a third of it missing, far outside the test's bounds."""
    from test_secure_aggregation import assert_sum_holds_the_planned_noise, distributed_variance

    clip, devices = 0.5, 3
    data = experiment(name="browser-distributed", rounds=1, over_selection=1.0)
    data["privacy"] = {
        "dp": "distributed",
        "clip_norm": clip,
        "noise_multiplier": 1.0,
        "secure_aggregation": {"stage_seconds": 10.0},
    }
    server = one_round_with_a_browser(federation, browser, tmp_path, data, devices)
    ended = round_records(server.state)
    assert ended[1]["status"] == "closed", ended
    secure = ended[1]["secure_aggregation"]
    assert secure["dp"] == "distributed" and secure["summed"] == devices
    assert_sum_holds_the_planned_noise(server.state, data, clip, distributed_variance(secure))


def test_a_browser_noises_its_own_update_under_local_dp(
    federation,
    browser,
    tmp_path,
):
    """dp = "local" with one browser and two `fedge client` processes: every device clips
    and noises its update before uploading; the applied sum is the clean sum of the three
    clipped deltas (the browser's recomputed here; full-batch SGD) plus noise of variance
    3·(z·C)² per value, the browser's third included."""
    from test_secure_aggregation import assert_sum_holds_the_planned_noise

    clip, z, devices = 0.5, 1.0, 3
    data = experiment(name="browser-local-dp", rounds=1)
    data["privacy"] = {"dp": "local", "clip_norm": clip, "noise_multiplier": z}
    server = one_round_with_a_browser(federation, browser, tmp_path, data, devices)
    assert "local DP: delta clipped to 0.5" in text_of(browser, "log")
    ended = round_records(server.state)
    assert ended[1]["status"] == "closed" and len(ended[1]["devices"]) == devices, ended
    assert_sum_holds_the_planned_noise(server.state, data, clip, devices * (z * clip) ** 2)


def test_a_page_that_requires_secure_aggregation_refuses_a_plain_round(
    federation, browser, tmp_path
):
    """#require=secure-aggregation in the page's address: a round without it is refused
    before training, with the reason, and nothing is sent; an unknown requirement is
    named."""
    server = federation(experiment(name="browser-require", rounds=1))
    x, y = partition(server.config, 0)
    np.savez(tmp_path / "mine.npz", x=x, y=y)
    browser.get(f"{server.url}/client#require=secure-aggregation")
    wait_for(browser, "backend", lambda text: "TensorFlow.js" in text and " on " in text)
    from selenium.webdriver.common.by import By

    browser.find_element(By.ID, "secret").send_keys(SECRET)
    browser.find_element(By.ID, "data-file").send_keys(str(tmp_path / "mine.npz"))
    wait_for(browser, "data-info", lambda text: "examples" in text and "no examples" not in text)
    browser.find_element(By.ID, "start").click()
    message = wait_for(browser, "error", lambda text: "which this device requires" in text)
    assert "has no secure aggregation" in message and "sends nothing" in message
    assert text_of(browser, "status") == "stopped"
    assert "training on" not in text_of(browser, "log")
    current = server.status()["round"]
    assert current["assigned"] == 1 and current["accepted"] == 0
    browser.get("about:blank")  # a new document: a changed fragment alone would not reload
    browser.get(f"{server.url}/client#require=secrecy")
    wait_for(browser, "error", lambda text: "unknown requirement secrecy" in text)


def test_a_page_that_wants_more_noise_than_a_local_dp_round_adds_refuses_it(
    federation, browser, tmp_path
):
    data = experiment(name="browser-min-noise", rounds=1)
    data["privacy"] = {"dp": "local", "clip_norm": 0.5, "noise_multiplier": 1.0}
    server = federation(data)
    x, y = partition(server.config, 0)
    np.savez(tmp_path / "mine.npz", x=x, y=y)
    browser.get(f"{server.url}/client#min_noise=2&secret={SECRET}")
    wait_for(browser, "backend", lambda text: "TensorFlow.js" in text and " on " in text)
    from selenium.webdriver.common.by import By

    browser.find_element(By.ID, "data-file").send_keys(str(tmp_path / "mine.npz"))
    wait_for(browser, "data-info", lambda text: "examples" in text and "no examples" not in text)
    browser.find_element(By.ID, "start").click()
    message = wait_for(browser, "error", lambda text: "which this device requires" in text)
    assert "noise of at least 2 times" in message and "it would add 1.00" in message
    assert "(min_noise=2)" in message
    assert server.status()["round"]["accepted"] == 0
