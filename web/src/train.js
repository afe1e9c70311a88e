// Local training in the browser: fedge's local SGD (fedge/fl/local.py) and the client
// halves of the strategies (fedge/fl/strategy/).
//
// For each of E epochs the device's n examples are shuffled and cut into batches of B (the
// last one smaller unless drop_last; B = null is full batch). At each step
//   g   = ∇ mean softmax cross-entropy of the batch + the strategy's gradient term
//         + weight_decay·w
//   buf = momentum·buf + g   (buf = 0 before the first step of a round)
//   w   ← w − lr·buf,  then w ← w − lr·d with the strategy's drift d
// exactly as PyTorch's SGD in fedge.fl.local.train_client. The shuffle is this file's own
// seeded stream (from the task's seed, the training round and the device id): PyTorch's
// random stream cannot be reproduced here, so a browser's update is a valid update of the
// same algorithm but not bit-identical to a Python client's on the same data.
//
// Client halves: FedAvg (and the strategies whose client is FedAvg's: FedAvgM, FedAdagrad,
// FedAdam, FedYogi, FedNova — their difference is on the server), FedProx (gradient term
// μ·(w − w_global)), SCAFFOLD (drift c − c_i after each step; reports Δc_i = c_i⁺ − c_i
// with c_i⁺ = c_i − c + (w_global − w)/(K·lr), and keeps c_i⁺).
//
// In a secure round the update is not uploaded but summed: secureParts gives the strategy's
// summands, as fedge.privacy.secagg.contribution does (secagg.js quantizes and masks them).

import { clientWeight } from "./secagg.js";
import { crossEntropy } from "./spec.js";

const FEDAVG_CLIENTS = ["fedavg", "fedavgm", "fedadagrad", "fedadam", "fedyogi", "fednova"];
export const SUPPORTED_STRATEGIES = [...FEDAVG_CLIENTS, "fedprox", "scaffold"];

export class UnsupportedTask extends Error {
  constructor(message) {
    super(message);
    this.name = "UnsupportedTask";
  }
}

// The client half of a task's [strategy] section: {name, mu?, scaffold?}.
export function clientHalf(strategy) {
  const name = strategy?.name ?? "fedavg";
  if (FEDAVG_CLIENTS.includes(name)) return { name };
  if (name === "fedprox") {
    const mu = strategy.mu ?? 0.01;
    if (!(typeof mu === "number" && mu >= 0))
      throw new UnsupportedTask(`FedProx mu must be >= 0, got ${mu}`);
    return { name, mu };
  }
  if (name === "scaffold") return { name, scaffold: true };
  throw new UnsupportedTask(
    `this browser client cannot run the strategy ${JSON.stringify(name)}; ` +
      `it runs ${SUPPORTED_STRATEGIES.join(", ")}`,
  );
}

// The local SGD settings of a task, checked as fedge.fl.local.LocalTraining does.
export function checkTraining(t) {
  const ok =
    Number.isInteger(t?.epochs) &&
    t.epochs >= 1 &&
    (t.batch_size === null || (Number.isInteger(t.batch_size) && t.batch_size >= 1)) &&
    t.lr > 0 &&
    Number.isFinite(t.lr) &&
    t.momentum >= 0 &&
    t.momentum < 1 &&
    t.weight_decay >= 0;
  if (!ok) throw new UnsupportedTask(`invalid local training settings ${JSON.stringify(t)}`);
  return { ...t, drop_last: Boolean(t.drop_last) };
}

// Local steps of one epoch over n examples.
export function stepsPerEpoch(n, training) {
  const b = training.batch_size === null ? n : Math.min(training.batch_size, n);
  return training.drop_last ? Math.floor(n / b) : Math.ceil(n / b);
}

// A 32-bit hash of a string (FNV-1a), to seed the shuffle.
function hash(text) {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) h = Math.imul(h ^ text.charCodeAt(i), 0x01000193);
  return h >>> 0;
}

// The device's shuffles in one round: epoch → a permutation of 0..n-1 (Fisher–Yates over
// mulberry32, seeded by (seed, training round, device id)).
export function shuffler(seed, trainingRound, deviceId, n) {
  let state = hash(`${seed}/${trainingRound}/${deviceId}`);
  const random = () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return () => {
    const order = Int32Array.from({ length: n }, (_, i) => i);
    for (let i = n - 1; i > 0; i--) {
      const j = Math.floor(random() * (i + 1));
      [order[i], order[j]] = [order[j], order[i]];
    }
    return order;
  };
}

const pause = () => new Promise((resolve) => setTimeout(resolve, 0));

// Local training of one round. `job`:
//   model      a SpecModel; weights: the global weights (tf.Tensors in its layout)
//   x, y, n    the inputs (model.inputs), the labels (Int32Array), the example count
//   training   {epochs, batch_size, lr, momentum, weight_decay, drop_last}
//   half       clientHalf(strategy); extras: the model file's extras (SCAFFOLD: {c}) and
//              clientState: the device's own state ({c} or null), both as tf.Tensor lists
//   order      () → the next epoch's permutation
//   progress   optional callback({step, steps, epoch, loss})
// Returns {weights, numSteps, metrics, extras, clientState} (tensors in the model layout;
// the caller disposes them).
export async function trainLocal(tf, job) {
  const { model, weights: start, x, y, n, training, half, order } = job;
  const b = training.batch_size === null ? n : Math.min(training.batch_size, n);
  const perEpoch = stepsPerEpoch(n, training);
  const steps = training.epochs * perEpoch;
  const { lr, momentum, weight_decay: decay } = training;
  const labels = tf.tensor1d(y, "int32");
  let drift = null;
  if (half.scaffold) {
    const { c } = job.extras;
    const own = job.clientState?.c;
    drift = own ? c.map((t, k) => tf.sub(t, own[k])) : c.map((t) => t.clone());
  }
  let w = start.map((t) => t.clone());
  let buf = null;
  let perm = null;
  let lossSum = 0;
  let seen = 0;
  let lastPause = performance.now();
  for (let step = 0; step < steps; step++) {
    if (step % perEpoch === 0) perm = order();
    const from = (step % perEpoch) * b;
    const idx = perm.subarray(from, Math.min(from + b, n));
    const out = tf.tidy(() => {
      const rows = tf.tensor1d(idx, "int32");
      const xb = tf.gather(x, rows);
      const yb = tf.gather(labels, rows);
      const { value, grads } = tf.valueAndGrads((...ws) =>
        crossEntropy(tf, model.forward(ws, xb), yb),
      )(w);
      const g = grads.map((grad, k) => {
        let d = grad;
        if (half.mu) d = tf.add(d, tf.mul(tf.sub(w[k], start[k]), half.mu));
        if (decay) d = tf.add(d, tf.mul(w[k], decay));
        return d;
      });
      const nextBuf = buf && momentum ? g.map((d, k) => tf.add(tf.mul(buf[k], momentum), d)) : g;
      let next = w.map((p, k) => tf.sub(p, tf.mul(nextBuf[k], lr)));
      if (drift) next = next.map((p, k) => tf.sub(p, tf.mul(drift[k], lr)));
      return { value, next, nextBuf };
    });
    tf.dispose([w, buf ?? []]);
    w = out.next;
    buf = out.nextBuf;
    const loss = (await out.value.data())[0];
    out.value.dispose();
    lossSum += loss * idx.length;
    seen += idx.length;
    job.progress?.({ step: step + 1, steps, epoch: Math.floor(step / perEpoch) + 1, loss });
    if (performance.now() - lastPause > 50) {
      await pause(); // let the page draw
      lastPause = performance.now();
    }
  }
  tf.dispose([buf ?? [], labels, drift ?? []]);
  const result = {
    weights: w,
    numSteps: steps,
    metrics: { train_loss: lossSum / Math.max(seen, 1), examples: seen },
    extras: {},
    clientState: null,
  };
  if (half.scaffold) {
    const { c } = job.extras;
    const own = job.clientState?.c;
    const deltaC = tf.tidy(() =>
      c.map((ck, k) =>
        steps === 0
          ? tf.zerosLike(ck)
          : tf.sub(tf.mul(tf.sub(start[k], w[k]), 1 / (steps * lr)), ck),
      ),
    );
    result.extras = { delta_c: deltaC };
    result.clientState = {
      c: tf.tidy(() => deltaC.map((d, k) => (own ? tf.add(own[k], d) : d.clone()))),
    };
  }
  return result;
}

// Mean cross-entropy and accuracy of `weights` on the device's examples.
export async function evaluate(tf, model, weights, x, y, n, batch = 512) {
  let loss = 0;
  let correct = 0;
  const labels = tf.tensor1d(y, "int32");
  for (let from = 0; from < n; from += batch) {
    const size = Math.min(batch, n - from);
    const [l, c] = tf.tidy(() => {
      const logits = model.forward(weights, tf.slice(x, from, size));
      const yb = tf.slice(labels, from, size);
      return [
        tf.mul(crossEntropy(tf, logits, yb), size),
        tf.sum(tf.cast(tf.equal(tf.argMax(logits, 1), yb), "int32")),
      ];
    });
    loss += (await l.data())[0];
    correct += (await c.data())[0];
    tf.dispose([l, c]);
  }
  labels.dispose();
  return { loss: loss / n, accuracy: correct / n };
}

// ---- the sum path (secure aggregation) ------------------------------------------------

// FedNova's a_k: the L1 norm of the weights local SGD with momentum ρ puts on its gradients
// (fedge/fl/strategy/fednova.py local_step_norm).
export function localStepNorm(steps, momentum) {
  if (momentum === 0) return steps;
  const rho = momentum;
  return (steps - (rho * (1 - rho ** steps)) / (1 - rho)) / (1 - rho);
}

// Tensors {name: {data}} flattened in sorted name order (fedge.fl.types.flatten_by_name),
// as float64.
function flattenByName(tensors, names) {
  const sorted = [...names].sort();
  const out = new Float64Array(sorted.reduce((n, name) => n + tensors[name].data.length, 0));
  let offset = 0;
  for (const name of sorted) {
    out.set(tensors[name].data, offset);
    offset += tensors[name].data.length;
  }
  return out;
}

// What this device adds to a secure round's sum, by segment name, as
// fedge.privacy.secagg.contribution computes it: in a DP round (the plan carries the
// clipping norm C) the delta clipped to C with weight 1 (and whether it fitted, for
// adaptive clipping); otherwise the strategy's summands ω·Δ and ω (FedNova: ω·Δ/a_k, ω and
// ω·a_k; SCAFFOLD adds its unweighted Δc_i). `initial` are the round's global weights,
// `update` {params, extras, numSamples, numSteps}.
export function secureParts(plan, half, training, initial, update) {
  const names = Object.keys(initial);
  const mine = flattenByName(update.params, names);
  const delta = flattenByName(initial, names).map((w, i) => mine[i] - w);
  const { weight, capped } = clientWeight(plan, update.numSamples);
  const parts = {};
  if (plan.clipNorm !== null) {
    const norm = Math.sqrt(delta.reduce((sum, d) => sum + d * d, 0));
    const fits = norm <= plan.clipNorm;
    parts.delta = fits ? delta : delta.map((d) => d * (plan.clipNorm / norm));
    if (plan.segments.some((s) => s.name === "unclipped"))
      parts.unclipped = Float64Array.of(fits ? 1 : 0);
    return { parts, capped };
  }
  parts.delta = delta.map((d) => d * weight);
  parts.weight = Float64Array.of(weight);
  if (half.name === "fednova") {
    if (update.numSteps === 0) {
      parts.delta.fill(0);
      parts.weight[0] = 0;
      parts.weighted_norm = Float64Array.of(0);
    } else {
      const a = localStepNorm(update.numSteps, training.momentum);
      parts.delta = parts.delta.map((d) => d / a);
      parts.weighted_norm = Float64Array.of(weight * a);
    }
  }
  if (half.scaffold) parts.delta_c = flattenByName(update.extras.delta_c, names);
  return { parts, capped };
}

// ---- local differential privacy --------------------------------------------------------

// One standard normal draw (Box–Muller) from uniforms in [0, 1) of `random`.
export function gaussian(random) {
  const radius = Math.sqrt(-2 * Math.log(1 - random())); // 1 − u ∈ (0, 1]: no log 0
  return radius * Math.cos(2 * Math.PI * random());
}

// Local DP (fedge/privacy/local.py privatize): the delta from the round's `initial` weights
// clipped to L2 norm C and N(0, (z·C)²) noise added to every value, from `random` (the
// caller's crypto.getRandomValues uniforms: nobody else can reproduce the noise), before the
// update leaves the device. `params` and `initial` are {name: {dtype, shape, data}}; → new
// params in float32.
export function privatizeLocally(initial, params, settings, random) {
  const { clip_norm: clip, noise_multiplier: z } = settings;
  if (!(clip > 0 && z > 0)) {
    throw new UnsupportedTask("local DP needs a positive clip_norm and noise_multiplier");
  }
  const names = Object.keys(initial);
  const start = flattenByName(initial, names);
  const mine = flattenByName(params, names);
  let squares = 0;
  for (let i = 0; i < start.length; i++) squares += (mine[i] - start[i]) ** 2;
  const norm = Math.sqrt(squares);
  const factor = norm > clip ? clip / norm : 1;
  const std = z * clip;
  const out = {};
  let offset = 0;
  for (const name of [...names].sort()) {
    const data = new Float32Array(params[name].data.length);
    for (let i = 0; i < data.length; i++, offset++) {
      const delta = (mine[offset] - start[offset]) * factor;
      data[i] = start[offset] + delta + gaussian(random) * std;
    }
    out[name] = { ...params[name], data };
  }
  return out;
}
