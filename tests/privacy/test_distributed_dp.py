"""Distributed DP under secure aggregation (the Skellam mechanism): the clients' noise has
the variance the formula says and sums to the planned variance; the RDP bound is the
paper's and its (ε, δ) conversion is dp-accounting's; in simulation the unmasked sum is the
clean quantized sum plus the clients' noise, and the server adds nothing; too few
survivors stop the round before unmasking; configurations it cannot cover are refused."""

import copy
import math
import re

import dp_accounting
import numpy as np
import pytest
import torch
from dp_accounting import rdp
from scipy import stats
from typer.testing import CliRunner

from fedge.cli.main import app
from fedge.config import parse_config
from fedge.errors import ConfigError
from fedge.fl.aggregators import Median
from fedge.fl.strategy import FedAvg
from fedge.fl.types import ClientUpdate, flatten
from fedge.privacy import PrivacyLedger
from fedge.privacy.distributed import DistributedDP
from fedge.privacy.dpfedavg import clipped_parts
from fedge.privacy.secagg import (
    RoundSetup,
    SecAggAborted,
    SecAggClient,
    SecAggRefused,
    SecAggServer,
    SecAggSettings,
    SecureAggregation,
    View,
)
from fedge.privacy.secagg import aggregation as secagg_aggregation
from fedge.privacy.secagg.encoding import Segment
from fedge.privacy.secagg.noisy import SkellamCodec
from fedge.privacy.skellam import (
    RDP_ORDERS,
    SkellamParameters,
    rdp_to_epsilon,
    skellam_noise,
    skellam_rdp,
)
from fedge.sim.experiment import prepare, run


def paper_rdp(alpha, l2, l1, mu):
    """Agarwal, Kairouz, Liu (NeurIPS 2021): RDP of the Skellam mechanism with noise of
    variance mu on the sum, integer sensitivities l2 and l1, integer order alpha > 1."""
    return alpha * l2**2 / (2 * mu) + min(
        ((2 * alpha - 1) * l2**2 + 6 * l1) / (4 * mu**2), 3 * l1 / (2 * mu)
    )


def paper_bound(norm, d):
    """Conditional randomized rounding's norm bound with β = e^-1/2 (√(2 ln 1/β) = 1)."""
    return min(norm + math.sqrt(d), math.sqrt(norm**2 + d / 4 + (norm + math.sqrt(d) / 2)))


def paper_epsilon(p, rounds, delta):
    """ε of ``rounds`` rounds of ``p``'s Skellam mechanism, computed here."""
    l2 = 2 * p.norm_bound
    l1 = min(math.sqrt(p.dimension) * l2, l2 * l2)
    mu = (p.noise_multiplier * p.norm_bound) ** 2
    curve = [rounds * paper_rdp(a, l2, l1, mu) for a in RDP_ORDERS]
    return rdp.compute_epsilon(RDP_ORDERS, curve, delta)[0]


def _variance_within(values, variance, sds=5.0):
    """The sample variance of ``values`` (mean known: 0) is within ``sds`` standard
    errors of ``variance`` (a Skellam has excess kurtosis 1/μ, so the sample variance's
    variance is (2μ² + μ)/n)."""
    n = values.size
    sample = float(np.mean(values.astype(np.float64) ** 2))
    error = math.sqrt((2 * variance**2 + variance) / n)
    return abs(sample - variance) < sds * error, sample


# --- the noise -------------------------------------------------------------------------


@pytest.mark.parametrize("variance", [0.8, 50.0, 3.0e6])
def test_skellam_noise_has_the_variance_of_the_formula(variance):
    noise = skellam_noise(400_000, variance, np.random.default_rng(7))
    assert noise.dtype == np.int64
    ok, sample = _variance_within(noise, variance)
    assert ok, (sample, variance)
    assert abs(noise.mean()) < 5 * math.sqrt(variance / noise.size)


def test_skellam_noise_follows_the_skellam_distribution():
    # Poisson(0.4) − Poisson(0.4), against SciPy's Skellam pmf (chi-square, fixed seed)
    noise = skellam_noise(200_000, 0.8, np.random.default_rng(3))
    values = np.arange(-4, 5)
    observed = np.array([(noise == v).sum() for v in values] + [(np.abs(noise) > 4).sum()])
    pmf = stats.skellam.pmf(values, 0.4, 0.4)
    expected = noise.size * np.append(pmf, 1 - pmf.sum())
    keep = expected > 5
    chi2 = float((((observed - expected) ** 2)[keep] / expected[keep]).sum())
    assert chi2 < stats.chi2.ppf(1 - 1e-4, keep.sum() - 1)


def _parameters(**overrides):
    values = {
        "clip_norm": 0.5,
        "noise_multiplier": 1.2,
        "dimension": 50_000,
        "clients_per_round": 10,
        "max_clients": 10,
        "dropout": 0.3,
        "corrupt": 0.1,
        "modulus_bits": 32,
    }
    return SkellamParameters.for_cohort(**{**values, **overrides})


def test_the_noise_of_the_fewest_honest_survivors_sums_to_the_planned_variance():
    p = _parameters()
    # 10 clients, 3 may drop out, 1 may collude: each adds μ/6, μ = (z·B)²
    assert (p.min_survivors, p.colluding, p.noise_clients) == (7, 1, 6)
    assert p.norm_bound == pytest.approx(paper_bound(p.scale * 0.5, 50_000), rel=1e-12)
    planned = (1.2 * p.norm_bound) ** 2
    assert p.client_variance * 6 == pytest.approx(planned, rel=1e-12)
    codec = SkellamCodec.from_parameters(Segment("delta", 50_000, -0.5, 0.5), p)
    gen = np.random.default_rng(11)
    six = sum(codec.noise(gen) for _ in range(6))
    ok, sample = _variance_within(six, planned)
    assert ok, (sample, planned)
    ten = six + sum(codec.noise(gen) for _ in range(4))  # more survivors: more noise
    ok, sample = _variance_within(ten, planned * 10 / 6)
    assert ok, (sample, planned * 10 / 6)


def test_the_modulus_holds_the_noisy_sum_of_every_client():
    p = _parameters()
    # worst case: every client at the clip norm on one coordinate, plus 7 sd of noise
    top = p.max_clients * (p.scale * p.clip_norm + 1)
    assert top + 7 * math.sqrt(p.max_clients * p.client_variance) < 2**31
    assert p.norm_bound / (p.scale * p.clip_norm) < 1.001  # rounding costs almost nothing
    codec = SkellamCodec.from_parameters(Segment("delta", 50_000, -0.5, 0.5), p)
    gen = np.random.default_rng(5)
    corner = torch.zeros(50_000, dtype=torch.float64)
    corner[0], corner[1] = 0.5, -0.5 * 2**-0.5  # past the clip norm: clipped to 0.5
    total = np.zeros(50_000, dtype=np.uint32)
    for _ in range(10):
        total += codec.encode({"delta": corner}, gen).values
    decoded = codec.decode(total, 10)["delta"].numpy()
    clipped = corner.numpy() * (0.5 / np.linalg.norm(corner.numpy()))
    error = decoded - 10 * clipped
    sd = math.sqrt(10 * p.client_variance) / p.scale
    assert np.abs(error).max() < 7 * sd  # no coordinate wrapped
    assert np.abs(error[:2]).max() < 7 * sd


def test_rounding_holds_every_vector_within_the_norm_bound():
    p = _parameters(dimension=1000, noise_multiplier=1.0, clients_per_round=3, max_clients=3)
    codec = SkellamCodec.from_parameters(Segment("delta", 1000, -0.5, 0.5), p)
    gen = np.random.default_rng(2)
    x = torch.from_numpy(gen.standard_normal(1000))
    x *= 0.5 / x.norm()
    for _ in range(20):
        ints = codec.quantize({"delta": x}, gen)
        assert float(np.linalg.norm(ints)) <= p.norm_bound
    assert np.abs(ints / p.scale - x.numpy()).max() <= 1 / p.scale


# --- accounting --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("l2", "l1", "mu"), [(2.0, 30.0, 4.0), (2e6, 3e8, 5e12), (10.0, 50.0, 3.0)]
)
def test_the_rdp_bound_is_the_papers_formula(l2, l1, mu):
    ours = skellam_rdp(RDP_ORDERS, l2=l2, l1=l1, variance=mu)
    assert ours == pytest.approx([paper_rdp(a, l2, l1, mu) for a in RDP_ORDERS], rel=1e-12)


def test_a_rounds_rdp_uses_the_integer_sensitivities_and_the_planned_variance():
    p = _parameters()
    for rounds in (1, 30):
        assert p.epsilon(rounds, 1e-5) == pytest.approx(paper_epsilon(p, rounds, 1e-5), rel=1e-9)


@pytest.mark.parametrize(
    ("sigma", "rounds", "delta"), [(1.0, 1, 1e-5), (0.7, 50, 1e-6), (4.0, 200, 1e-5)]
)
def test_rdp_to_epsilon_is_dp_accountings_conversion_on_the_gaussian(sigma, rounds, delta):
    curve = [rounds * a / (2 * sigma**2) for a in RDP_ORDERS]  # the Gaussian's RDP
    accountant = rdp.RdpAccountant(orders=RDP_ORDERS)
    accountant.compose(dp_accounting.GaussianDpEvent(sigma), rounds)
    assert rdp_to_epsilon(RDP_ORDERS, curve, delta) == pytest.approx(
        accountant.get_epsilon(delta), rel=1e-9
    )


def test_with_a_fine_scale_the_ledger_is_close_to_the_gaussian_ledger():
    p = _parameters(noise_multiplier=3.0)
    skellam = PrivacyLedger(1000, 10, 3.0, 1e-5, skellam=p)
    gaussian = PrivacyLedger(1000, 10, 3.0, 1e-5, amplified=False)  # z/2, replace-one
    for rounds in (1, 10, 100):
        # the Gaussian with multiplier z/2 on the same (integer) orders
        same_orders = rdp_to_epsilon(RDP_ORDERS, [rounds * 2 * a / 9.0 for a in RDP_ORDERS], 1e-5)
        assert gaussian.epsilon(rounds) <= same_orders <= skellam.epsilon(rounds)
        assert skellam.epsilon(rounds) < 1.001 * same_orders


# --- the sum path in simulation ------------------------------------------------------------

D, CLIENTS, CLIP, Z = 20_000, 10, 0.5, 1.0
W = {"w": torch.zeros(D)}


def _updates(seed=0):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for k in range(CLIENTS):
        delta = torch.randn(D, generator=gen)
        delta *= (0.3 + 0.1 * k) / delta.norm()  # some under the clip norm, some over
        out.append(ClientUpdate(client=k, params={"w": delta}, num_samples=10, num_steps=1))
    return out


def _distributed(dropout=0.3, simulated_dropout=0.3):
    parameters = SkellamParameters.for_cohort(
        clip_norm=CLIP,
        noise_multiplier=Z,
        dimension=D,
        clients_per_round=CLIENTS,
        max_clients=CLIENTS,
        dropout=dropout,
        corrupt=0.05,
        modulus_bits=32,
    )
    inner = DistributedDP(FedAvg(), parameters=parameters, expected_clients=CLIENTS)
    settings = SecAggSettings(dropout=dropout, simulated_dropout=simulated_dropout)
    return SecureAggregation(inner, settings, seed=4), parameters


def test_the_unmasked_sum_is_the_clean_sum_plus_the_clients_noise(monkeypatch):
    strategy, p = _distributed()
    clean, unmasked = {}, {}
    real_contribution, real_run = secagg_aggregation.contribution, secagg_aggregation.run_in_process

    def recording_contribution(inner, plan, task, update, generator):
        # the same draws, without the noise: the quantization comes first
        parts = clipped_parts(task, update, plan.clip_norm, count_unclipped=False)
        clean[str(update.client)] = plan.codec.quantize(parts, copy.deepcopy(generator))
        unmasked["codec"] = plan.codec
        return real_contribution(inner, plan, task, update, generator)

    def recording_run(*args, **kwargs):
        total, view, traffic = real_run(*args, **kwargs)
        unmasked["total"], unmasked["view"] = total, view
        return total, view, traffic

    monkeypatch.setattr(secagg_aggregation, "contribution", recording_contribution)
    monkeypatch.setattr(secagg_aggregation, "run_in_process", recording_run)
    state = strategy.init(W)
    new = strategy.aggregate(state, _updates())

    codec, view = unmasked["codec"], unmasked["view"]
    assert len(view.survivors) == 7 and len(view.dropped) == 3
    noise = codec.centred(unmasked["total"]) - sum(clean[c] for c in view.survivors)
    # 7 survivors, each adding μ/7 (none may collude in a cohort of 10 at 5%)
    assert p.noise_clients == 7
    ok, sample = _variance_within(noise, 7 * p.client_variance)
    assert ok, (sample, 7 * p.client_variance)
    assert 7 * p.client_variance == pytest.approx((Z * p.norm_bound) ** 2, rel=1e-12)
    # the server adds nothing: the model moves by the decoded sum over m (float32 weights)
    moved = flatten(new.params).double() - flatten(state.params).double()
    expected = torch.from_numpy(codec.centred(unmasked["total"]) / p.scale / CLIENTS)
    assert (moved - expected).abs().max() < 1e-6  # the noise on it has std ~0.05
    report = strategy.last_round
    assert report["dp"] == "distributed" and report["summed"] == 7
    assert report["noise_variance"] == pytest.approx(7 * p.client_variance)


def test_more_dropouts_than_planned_abort_before_the_sum_is_unmasked():
    strategy, _ = _distributed(dropout=0.3, simulated_dropout=0.4)
    state = strategy.init(W)
    with pytest.raises(SecAggAborted, match="noise of distributed DP needs at least 7"):
        strategy.aggregate(state, _updates())


def test_a_client_refuses_to_unmask_fewer_survivors_than_the_noise_needs():
    ids = [f"c{i}" for i in range(5)]
    setup = RoundSetup(b"distributed", 2, 32, 4, min_survivors=5)
    clients = {c: SecAggClient(c, setup) for c in ids}
    server = SecAggServer(setup, ids, degree=4, graph_seed=1)
    for c, client in clients.items():
        server.receive_keys(c, client.advertise())
    server.close_advertise()
    for c, client in clients.items():
        server.receive_shares(c, client.share(server.neighbours_of(c)))
    server.close_share()
    for c in ids[:4]:  # c4 vanishes before its masked input
        server.receive_masked(c, clients[c].masked(server.shares_for(c), np.zeros(4, np.uint32)))
    with pytest.raises(SecAggAborted, match="needs at least 5"):
        server.close_masked()
    # a server that skipped that check: each client checks the list itself
    with pytest.raises(SecAggRefused, match="refusing to unmask"):
        clients["c0"].confirm(View(tuple(ids[:4]), (ids[4],)))


def test_without_secure_aggregation_there_is_no_path_for_the_update():
    strategy, _ = _distributed()
    with pytest.raises(ConfigError, match=r"needs \[privacy.secure_aggregation\]"):
        strategy.inner.aggregate(strategy.init(W), _updates())


# --- a whole simulation ----------------------------------------------------------------------

DISTRIBUTED = {"dp": "distributed", "clip_norm": 0.5, "secure_aggregation": {}}


def test_a_simulation_records_epsilon_and_the_clients_noise_every_round(digits):
    fed = prepare(digits(rounds=2, privacy={**DISTRIBUTED, "noise_multiplier": 2.0}))
    p = fed.privacy.ledger.skellam
    assert p.dimension == 64 * 32 + 32 + 32 * 10 + 10  # the digits MLP
    result = run(fed)
    for r, metrics in enumerate(result.history, start=1):
        assert metrics["epsilon"] == pytest.approx(
            paper_epsilon(p, r, fed.privacy.ledger.delta), rel=1e-9
        )
        secure = metrics["secure_aggregation"]
        assert secure["dp"] == "distributed" and secure["summed"] == 4
        assert secure["noise_variance"] >= (2.0 * p.norm_bound) ** 2 * (1 - 1e-12)
    summary = fed.privacy.summary(2)
    assert summary["placement"] == "distributed"
    assert "clients add the noise before secure aggregation" in summary["guarantee"]


def test_a_target_epsilon_calibrates_the_clients_noise(digits):
    fed = prepare(digits(rounds=3, privacy={**DISTRIBUTED, "target_epsilon": 20.0}))
    plan = fed.privacy
    assert plan.calibrated and plan.rounds == 3
    assert plan.epsilon(3) <= 20.0
    lower = SkellamParameters.for_cohort(
        clip_norm=0.5,
        noise_multiplier=plan.noise_multiplier - 0.01,
        dimension=plan.ledger.skellam.dimension,
        clients_per_round=4,
        max_clients=4,
        dropout=0.3,
        corrupt=0.05,
        modulus_bits=32,
    )
    assert lower.epsilon(3, plan.ledger.delta) > 20.0


@pytest.mark.parametrize(
    ("privacy", "strategy", "match"),
    [
        (
            {"dp": "distributed", "clip_norm": 0.5, "noise_multiplier": 1.0},
            None,
            r"needs \[privacy.secure_aggregation\]",
        ),
        (
            {**DISTRIBUTED, "adaptive_clipping": True, "noise_multiplier": 1.0},
            None,
            "adaptive clipping",
        ),
        (
            {**DISTRIBUTED, "noise_multiplier": 1.0},
            {"name": "fedavg", "aggregator": {"name": "median"}},
            "needs the mean aggregator",
        ),
        ({**DISTRIBUTED, "noise_multiplier": 1.0}, {"name": "scaffold"}, "SCAFFOLD"),
    ],
)
def test_what_distributed_dp_cannot_cover_is_refused(digits, privacy, strategy, match):
    with pytest.raises(ConfigError, match=match):
        sections = {"privacy": privacy}
        if strategy is not None:
            sections["strategy"] = strategy
        prepare(digits(**sections))


def test_the_config_itself_refuses_distributed_dp_without_secure_aggregation(digits):
    raw = digits().model_dump(mode="json", exclude_none=True)
    privacy = {"dp": "distributed", "clip_norm": 0.5, "noise_multiplier": 1.0}
    with pytest.raises(ConfigError, match=r"needs \[privacy.secure_aggregation\]") as info:
        parse_config({**raw, "privacy": privacy})
    assert "\n" not in str(info.value)
    parse_config({**raw, "privacy": {**privacy, "secure_aggregation": {}}})


def test_a_robust_aggregator_is_refused_by_the_wrapper_itself():
    with pytest.raises(ConfigError, match="needs the mean aggregator"):
        DistributedDP(FedAvg(aggregator=Median()), parameters=_parameters(), expected_clients=10)


def test_privacy_plan_prints_the_skellam_noise():
    args = ["--clients", "1000", "--per-round", "100", "--rounds", "50", "--epsilon", "8"]
    result = CliRunner().invoke(app, ["privacy", "plan", *args, "--params", "100000"])
    assert result.exit_code == 0, result.output
    z = float(re.search(r"distributed DP.*?z = ([0-9.]+)", result.output, re.S).group(1))
    mu = float(re.search(r"μ = \(z·B\)² = ([0-9.e+]+)", result.output).group(1))

    def at(multiplier):
        return _parameters(
            noise_multiplier=multiplier,
            dimension=100_000,
            clients_per_round=100,
            max_clients=100,
            dropout=0.3,
            corrupt=0.05,
            clip_norm=1.0,
        )

    assert at(z).epsilon(50, 1e-5) <= 8.0 < at(z - 0.01).epsilon(50, 1e-5)
    assert mu == pytest.approx((z * at(z).norm_bound) ** 2, rel=1e-3)
    assert "equivalent Gaussian noise multiplier" in result.output
