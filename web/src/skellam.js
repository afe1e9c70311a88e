// Distributed differential privacy on the browser client: the device's side of
// fedge/privacy/secagg/noisy.py (SkellamCodec.encode) and fedge/privacy/skellam.py.
//
// A device's delta x, already clipped to L2 norm S by the sum path (train.js secureParts),
// is clipped again here (the bound must not rest on the caller), scaled by γ, rounded by
// conditional randomized rounding to L2 norm at most B, and noised with Skellam noise
// Sk(μ/2, μ/2) of variance μ per coordinate: v = round_B(γ·x) + Sk, stored modulo 2^b (two's
// complement). The server chooses γ, B and μ and sends them in the round's plan; it only
// ever unmasks the sum of already-noised vectors.
//
// Skellam noise is the difference of two Poisson(μ/2) draws. Poisson draws use the
// multiplication method below a mean of 10 and the transformed rejection method PTRS
// (Hörmann, "The transformed rejection method for generating Poisson random variables",
// 1993) above, as numpy's Generator.poisson does for the Python devices; the uniforms come
// from crypto.getRandomValues (the caller's `random`), so nobody else can reproduce them.

// Conditional rounding gives up after this many draws (each succeeds with probability at
// least 1 − β; fedge/privacy/skellam.py MAX_ROUNDING_DRAWS).
const MAX_ROUNDING_DRAWS = 1000;
// The largest Poisson mean a plan may ask for (skellam.py POISSON_MEAN_LIMIT).
const POISSON_MEAN_LIMIT = 2 ** 40;

export class DistributedDpError extends Error {
  constructor(message) {
    super(message);
    this.name = "DistributedDpError";
  }
}

// Stirling's series for log Γ(x), x > 0: its first ten coefficients B_2k/(2k(2k − 1)),
// evaluated at x + n ≥ 7 and brought back down by log Γ(x) = log Γ(x + n) − Σ log(x + i).
const STIRLING = [
  1 / 12,
  -1 / 360,
  1 / 1260,
  -1 / 1680,
  1 / 1188,
  -691 / 360360,
  1 / 156,
  -3617 / 122400,
  43867 / 244188,
  -174611 / 125400,
];
const HALF_LOG_TWO_PI = 0.5 * Math.log(2 * Math.PI);

export function logGamma(x) {
  if (x === 1 || x === 2) return 0;
  const n = x < 7 ? Math.floor(7 - x) : 0;
  let x0 = x + n;
  const x2 = 1 / (x0 * x0);
  let series = STIRLING[9];
  for (let k = 8; k >= 0; k--) series = series * x2 + STIRLING[k];
  let value = series / x0 + HALF_LOG_TWO_PI + (x0 - 0.5) * Math.log(x0) - x0;
  for (let i = 0; i < n; i++) {
    x0 -= 1;
    value -= Math.log(x0);
  }
  return value;
}

// One Poisson(lam) draw (an integer-valued double), from uniforms in [0, 1) of `random`.
export function poisson(lam, random) {
  if (lam === 0) return 0;
  if (lam < 10) {
    // multiplication: the number of uniforms whose running product stays above e^−λ
    const limit = Math.exp(-lam);
    let count = 0;
    let product = random();
    while (product > limit) {
      count++;
      product *= random();
    }
    return count;
  }
  const slam = Math.sqrt(lam);
  const logLam = Math.log(lam);
  const b = 0.931 + 2.53 * slam;
  const a = -0.059 + 0.02483 * b;
  const logInvAlpha = Math.log(1.1239 + 1.1328 / (b - 3.4));
  const vr = 0.9277 - 3.6224 / (b - 2);
  for (;;) {
    const u = random() - 0.5;
    const v = random();
    const us = 0.5 - Math.abs(u);
    const k = Math.floor(((2 * a) / us + b) * u + lam + 0.43);
    if (us >= 0.07 && v <= vr) return k; // the squeeze: accepted without the density
    if (k < 0 || (us < 0.013 && v > us)) continue;
    const lhs = Math.log(v) + logInvAlpha - Math.log(a / (us * us) + b);
    if (lhs <= -lam + k * logLam - logGamma(k + 1)) return k;
  }
}

// `length` draws of Sk(variance/2, variance/2) (variance `variance`), as a Float64Array of
// integers.
export function skellamNoise(length, variance, random) {
  if (!(variance >= 0)) throw new DistributedDpError(`the variance must be >= 0, got ${variance}`);
  const out = new Float64Array(length);
  if (variance === 0) return out;
  const lam = variance / 2;
  for (let i = 0; i < length; i++) out[i] = poisson(lam, random) - poisson(lam, random);
  return out;
}

// `x` randomly rounded (up with probability its fractional part), drawn again until the
// L2 norm is at most `bound` (skellam.py conditional_rounding).
export function conditionalRounding(x, bound, random) {
  const low = x.map(Math.floor);
  const fraction = x.map((v, i) => v - low[i]);
  const limit = bound * bound * (1 - 1e-9); // float sums of squares are exact to ~1e-10
  const rounded = new Float64Array(x.length);
  for (let draw = 0; draw < MAX_ROUNDING_DRAWS; draw++) {
    let squares = 0;
    for (let i = 0; i < x.length; i++) {
      rounded[i] = low[i] + (random() < fraction[i] ? 1 : 0);
      squares += rounded[i] * rounded[i];
    }
    if (squares <= limit) return rounded;
  }
  throw new DistributedDpError(
    `conditional rounding found no rounding within norm ${bound.toPrecision(6)} in ` +
      `${MAX_ROUNDING_DRAWS} draws`,
  );
}

// The plan's `distributed_dp` section (SkellamCodec.to_json), checked as SkellamCodec
// checks it: {clipNorm, scale, normBound, clientVariance, minSurvivors}. `bad(why)` throws.
export function parseDistributed(json, segments, maxClients, bad) {
  if (json === null || typeof json !== "object" || Array.isArray(json)) {
    bad("has a distributed_dp section that is not a JSON object");
  }
  if (segments.length !== 1 || segments[0].name !== "delta") {
    bad("encodes exactly one segment, the delta, under distributed DP");
  }
  const positive = (name) => {
    const v = json[name];
    if (!(typeof v === "number" && Number.isFinite(v) && v > 0)) {
      bad(`needs distributed_dp.${name} as a positive number, got ${JSON.stringify(v)}`);
    }
    return v;
  };
  const dp = {
    clipNorm: positive("clip_norm"),
    scale: positive("scale"),
    normBound: positive("norm_bound"),
    clientVariance: positive("client_variance"),
    minSurvivors: json.min_survivors,
  };
  if (dp.normBound < dp.scale * dp.clipNorm) {
    bad("has a rounded norm bound below the scaled clipping norm");
  }
  if (dp.clientVariance / 2 > POISSON_MEAN_LIMIT) {
    bad(`asks for Skellam noise of variance ${dp.clientVariance}, above 2^41`);
  }
  if (!(Number.isSafeInteger(dp.minSurvivors) && dp.minSurvivors >= 1)) {
    bad("needs distributed_dp.min_survivors as a positive integer");
  }
  if (dp.minSurvivors > maxClients) bad("needs min_survivors in [1, max_clients]");
  return dp;
}

// SkellamCodec.encode: the delta (a Float64Array of the plan's length) clipped to S, scaled
// by γ, rounded to norm B and noised, modulo 2^b → {values: Uint32Array (b ≤ 32) or
// BigUint64Array (b > 32), clipped: 0} (nothing is range-clipped here).
export function encodeDistributed(plan, delta, random) {
  const { clipNorm, scale, normBound, clientVariance } = plan.distributedDp;
  if (!(ArrayBuffer.isView(delta) || Array.isArray(delta)) || delta.length !== plan.length) {
    throw new RangeError(`the delta has ${delta?.length} values, expected ${plan.length}`);
  }
  let squares = 0;
  for (let i = 0; i < delta.length; i++) {
    if (!Number.isFinite(delta[i])) throw new RangeError("the delta holds NaN or Inf");
    squares += delta[i] * delta[i];
  }
  const norm = Math.sqrt(squares);
  const factor = norm > clipNorm ? clipNorm / norm : 1;
  const scaled = Float64Array.from(delta, (v) => v * factor * scale);
  const rounded = conditionalRounding(scaled, normBound, random);
  const noise = skellamNoise(plan.length, clientVariance, random);
  if (plan.bits > 32) {
    const values = new BigUint64Array(plan.length);
    for (let i = 0; i < plan.length; i++) {
      values[i] = BigInt.asUintN(plan.bits, BigInt(rounded[i] + noise[i]));
    }
    return { values, clipped: 0 };
  }
  const modulus = 2 ** plan.bits;
  const values = new Uint32Array(plan.length);
  for (let i = 0; i < plan.length; i++) {
    const v = (rounded[i] + noise[i]) % modulus; // exact: |v| < 2^53
    values[i] = v < 0 ? v + modulus : v;
  }
  return { values, clipped: 0 };
}
