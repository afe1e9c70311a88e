"""The browser client's DP noise in real headless Chromium. Distributed DP
(``web/src/skellam.js``): log Γ against ``math.lgamma``, Poisson draws against SciPy's
distribution, Skellam noise of the planned variance, conditional rounding, and the noisy
encoding decoded by fedge's Python codec. Local DP (``web/src/train.js``): Gaussian draws,
and the clipped, noised update against ``fedge.privacy.local.privatize``. The browser's
uniforms come from ``crypto.getRandomValues`` (nobody can seed them), so the statistical
checks use thresholds a correct sampler fails once in a million runs."""

import math

import numpy as np
import pytest
from scipy import stats
from test_browser_client import b64, browser, chromium, origin, run_js, unb64  # noqa: F401
from test_browser_secagg import page  # noqa: F401 (a document of the origin, no page script)

from fedge.privacy.secagg import RoundPlan, RoundSetup, SkellamCodec
from fedge.privacy.secagg.encoding import Segment
from fedge.privacy.secagg.params import GraphParameters

HEAD = """
const sk = await import("/client/skellam.js");
const { gaussian, privatizeLocally } = await import("/client/train.js");
const sa = await import("/client/secagg.js");
const random = sa.uniformSource();
"""


def js(driver, body, *args):
    return run_js(driver, HEAD + body, *args)


def floats(text: str) -> np.ndarray:
    return np.frombuffer(unb64(text), dtype=np.float64)


# `count` Poisson draws of mean args[1], or Skellam draws of variance args[1].
DRAW = """
const [what, lam, count] = args;
let out;
if (what === "poisson") {
  out = new Float64Array(count);
  for (let i = 0; i < count; i++) out[i] = sk.poisson(lam, random);
} else out = sk.skellamNoise(count, lam, random);
return to64(new Uint8Array(out.buffer));
"""


def test_log_gamma_equals_math_lgamma(page):
    xs = [0.5, 1, 1.5, 2, 2.5, 3, 6.9, 7, 7.5, 10, 123.4, 1e6 + 0.5]
    got = js(page, "return args[0].map((x) => sk.logGamma(x));", xs)
    for x, value in zip(xs, got, strict=True):
        assert value == pytest.approx(math.lgamma(x), rel=1e-13, abs=1e-14), x


@pytest.mark.parametrize("lam", [0.7, 4.0, 10.0, 57.3, 2.5e4])
def test_poisson_draws_follow_the_poisson_distribution(page, lam):
    """Both methods (multiplication below a mean of 10, PTRS above): a chi-square test of
    100,000 draws against the Poisson pmf, over bins expecting at least 20 draws."""
    n = 100_000
    draws = floats(js(page, DRAW, "poisson", lam, n))
    assert np.all(draws == np.round(draws)) and draws.min() >= 0
    lo, hi = stats.poisson.ppf([1e-4, 1 - 1e-4], lam)
    width = max(1, int(math.sqrt(lam) / 4))  # several values per bin for a large mean
    edges = np.concatenate([[-0.5], np.arange(lo + 0.5, hi, width), [np.inf]])
    observed = np.histogram(draws, bins=edges)[0]
    expected = n * np.diff(stats.poisson.cdf(np.minimum(edges, 1e12), lam))
    keep = expected >= 20
    assert keep.sum() >= 5
    chi = (((observed - expected) ** 2 / expected)[keep]).sum()
    assert stats.chi2.sf(chi, keep.sum() - 1) > 1e-6, (chi, keep.sum())
    assert abs(draws.mean() - lam) < 5 * math.sqrt(lam / n)


@pytest.mark.parametrize("variance", [3.0, 2.0e6])
def test_skellam_noise_has_mean_zero_and_the_planned_variance(page, variance):
    n = 100_000
    noise = floats(js(page, DRAW, "skellam", variance, n))
    assert np.all(noise == np.round(noise))
    assert abs(noise.mean()) < 5 * math.sqrt(variance / n)
    # the sample variance of a near-Gaussian: (n − 1)·s²/σ² is χ² with n − 1 dof
    stat = (n - 1) * noise.var(ddof=1) / variance
    assert stats.chi2.ppf(1e-6, n - 1) < stat < stats.chi2.ppf(1 - 1e-6, n - 1)
    # and it is symmetric: the third standardized moment is ~0 (SE √(6/n))
    assert abs(stats.skew(noise)) < 5 * math.sqrt(6 / n)


def test_conditional_rounding_rounds_each_value_down_or_up_within_the_bound(page):
    x = np.linspace(-3.3, 4.7, 41)
    exact = float(np.linalg.norm(x))
    out = js(
        page,
        """
        const x = Float64Array.from(args[0]);
        const draws = [];
        for (let i = 0; i < 2000; i++) {
          draws.push(Array.from(sk.conditionalRounding(x, args[1], random)));
        }
        let refused = null;
        try {
          sk.conditionalRounding(x, args[2], random);
        } catch (e) {
          refused = [e.name, e.message];
        }
        return { draws, refused };
        """,
        x.tolist(),
        exact + 1.0,
        exact / 2,  # below the norm of every rounding: nothing fits
    )
    draws = np.array(out["draws"])
    assert np.all((draws == np.floor(x)) | (draws == np.ceil(x)))
    assert np.all(np.linalg.norm(draws, axis=1) <= exact + 1.0)
    # unbiased where the bound rarely binds: the mean is x within 5 standard errors
    frac = x - np.floor(x)
    se = np.sqrt(frac * (1 - frac) / len(draws)) + 1e-12
    assert np.all(np.abs(draws.mean(axis=0) - x) <= 5 * se + 0.02)
    assert out["refused"][0] == "DistributedDpError"
    assert "no rounding within norm" in out["refused"][1]


def distributed_plan(bits, length, *, clip=1.0, scale=50.0, variance=4.0, min_survivors=2):
    bound = scale * clip + math.sqrt(length)
    codec = SkellamCodec(
        segments=(Segment("delta", length, -clip, clip),),
        bits=bits,
        max_clients=5,
        clip_norm=clip,
        scale=scale,
        norm_bound=bound,
        client_variance=variance,
        min_survivors=min_survivors,
    )
    setup = RoundSetup(b"skellam test", 2, bits, length, min_survivors=min_survivors)
    return RoundPlan(setup, GraphParameters(5, 4, 2), codec, "uniform", None, clip)


@pytest.mark.parametrize("bits", [20, 32, 64])
def test_the_noisy_encoding_decodes_to_the_clipped_delta_plus_the_planned_noise(page, bits):
    """A delta of norm 3 under S = 1: Python's codec decodes the browser's integers (in two's
    complement modulo 2^b, negative values included) to γ·Δ·S/‖Δ‖ plus rounding and noise
    whose variance is the plan's μ (plus at most 1/4 of rounding per value)."""
    length, variance = 50_000, 4.0
    plan = distributed_plan(bits, length, variance=variance)
    rng = np.random.default_rng(0)
    delta = rng.normal(size=length)
    delta *= 3.0 / np.linalg.norm(delta)
    out = js(
        page,
        """
        const plan = sa.parsePlan(args[0]);
        const { values, clipped } = sa.encode(plan, { delta: Float64Array.from(args[1]) });
        return { values: to64(new Uint8Array(values.buffer)), clipped,
                 dp: plan.distributedDp, minSurvivors: plan.minSurvivors };
        """,
        plan.to_json(),
        delta.tolist(),
    )
    assert out["clipped"] == 0 and out["minSurvivors"] == 2
    assert out["dp"]["scale"] == 50.0 and out["dp"]["clientVariance"] == variance
    values = np.frombuffer(unb64(out["values"]), dtype=plan.setup.dtype.newbyteorder("<"))
    assert values.max() < 2**bits
    integers = plan.codec.centred(values.astype(plan.setup.dtype))
    assert integers.min() < 0  # negative values went through two's complement
    target = 50.0 * delta / 3.0  # γ·Δ clipped to S = 1
    residual = integers - target
    assert abs(residual.mean()) < 5 * math.sqrt((variance + 0.25) / length)
    spread = residual.var(ddof=1)
    se = variance * math.sqrt(2 / length)
    assert variance - 5 * se < spread < variance + 0.25 + 5 * se, spread
    rounded_norm = np.linalg.norm(integers)  # with the noise: about √(B² + dμ)
    assert rounded_norm < math.sqrt(plan.codec.norm_bound**2 + length * variance) * 1.01


def test_distributed_plans_are_parsed_and_bad_ones_refused(page):
    plan = distributed_plan(32, 10).to_json()
    section = plan["distributed_dp"]
    bad = [
        {**plan, "distributed_dp": {**section, "scale": -1}},
        {**plan, "distributed_dp": {**section, "norm_bound": 1.0}},  # below γ·S
        {**plan, "distributed_dp": {**section, "client_variance": "4"}},
        {**plan, "distributed_dp": {**section, "client_variance": 2.0**45}},
        {**plan, "distributed_dp": {**section, "min_survivors": 0}},
        {**plan, "distributed_dp": {**section, "min_survivors": 6}},
        {**plan, "distributed_dp": "yes"},
        {**plan, "segments": [["delta", 9, -1, 1], ["weight", 1, 0, 1]]},
    ]
    out = js(
        page,
        """
        const attempt = (json) => {
          try {
            const plan = sa.parsePlan(json);
            return { dp: plan.distributedDp, minSurvivors: plan.minSurvivors };
          } catch (e) {
            return { name: e.name, message: e.message };
          }
        };
        return { good: attempt(args[0]), bad: args[1].map(attempt) };
        """,
        plan,
        bad,
    )
    assert out["good"]["dp"] == {
        "clipNorm": 1.0,
        "scale": 50.0,
        "normBound": section["norm_bound"],
        "clientVariance": 4.0,
        "minSurvivors": 2,
    }
    assert out["good"]["minSurvivors"] == 2
    for case, result in zip(bad, out["bad"], strict=True):
        assert result.get("name") == "SecAggUnsupported", (case, result)


def test_gaussian_draws_are_standard_normal(page):
    n = 100_000
    out = js(
        page,
        """
        const out = new Float64Array(args[0]);
        for (let i = 0; i < out.length; i++) out[i] = gaussian(random);
        return to64(new Uint8Array(out.buffer));
        """,
        n,
    )
    draws = floats(out)
    assert stats.kstest(draws, "norm").pvalue > 1e-6
    assert abs(draws.mean()) < 5 / math.sqrt(n)
    stat = (n - 1) * draws.var(ddof=1)
    assert stats.chi2.ppf(1e-6, n - 1) < stat < stats.chi2.ppf(1 - 1e-6, n - 1)


@pytest.mark.parametrize("clip", [0.05, 100.0])  # clipped, and under the norm
def test_local_dp_clips_and_noises_the_update_as_python_does(page, clip):
    """With the same uniforms (a fixed list handed to both) the browser's privatized
    update is Python's ``privatize`` with the same normals (Box–Muller), to float32."""
    import torch

    from fedge.federation.wire import encode_model, encode_update
    from fedge.fl.types import ClientTask, ClientUpdate
    from fedge.privacy.local import privatize

    gen = torch.Generator().manual_seed(4)
    initial = {"b.w": torch.randn(4, 3, generator=gen), "a.b": torch.randn(6, generator=gen)}
    params = {k: v + 0.1 * torch.randn(v.shape, generator=gen) for k, v in initial.items()}
    z, d = 0.7, 18
    uniforms = np.random.default_rng(5).random(2 * d)
    out = js(
        page,
        """
        const [initialFile, updateFile, settings, uniforms] = args;
        let next = 0;
        const fixed = () => uniforms[next++];
        const initial = st.decodeModel(b64(initialFile)).params;
        const update = st.decodeUpdate(b64(updateFile));
        const got = privatizeLocally(initial, update.params, settings, fixed);
        return to64(st.encodeModel(got, {}, 0));
        """,
        b64(encode_model(initial, {}, model_version=0)),
        b64(
            encode_update(
                ClientUpdate(client="d", params=params, num_samples=5, num_steps=1),
                round=1,
                model_version=0,
            )
        ),
        {"clip_norm": clip, "noise_multiplier": z},
        uniforms.tolist(),
    )
    from fedge.federation.wire import decode_model

    got = decode_model(unb64(out))[1]
    u1, u2 = uniforms[0::2], uniforms[1::2]  # per value: the radius's, then the angle's
    normals = np.sqrt(-2 * np.log(1 - u1)) * np.cos(2 * np.pi * u2)
    expected = privatize(
        ClientTask(round=1, params=initial),
        ClientUpdate(client="d", params=params, num_samples=5, num_steps=1),
        clip_norm=clip,
        noise_multiplier=z,
        normal=lambda n: torch.from_numpy(normals[:n]),
    ).params
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value.float(), rtol=0, atol=1e-6)
