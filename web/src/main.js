// The browser client's page: a device of a fedge federation, like `fedge client`
// (fedge/federation/client.py), with the protocol in protocol.js, the model in spec.js,
// the local training in train.js and its storage in store.js.
//
// Parameters, in the URL's fragment (#secret=…&data=…, never sent to the server) or its
// query: secret (the enrollment secret), data (the URL of an examples file: a data: URL
// or a file on this server — for demos; the page says so), backend (a TensorFlow.js
// backend: wasm, webgl or cpu; by default the fastest that works here, see backends.js),
// wait (long-poll seconds, default 10), require (comma-separated protections every round
// must have, as `fedge client --require`: secure-aggregation, noise). With both examples
// and credentials from the URL the page starts on its own.
//
// The device's examples: an .npz or JSON file (data.js), a folder of images with a
// labels.csv, or drawings on the page's canvas (images.js).

import * as tf from "./tf.fesm.min.js";
import { chooseBackend } from "./backends.js";
import { DataError, checkExamples, readExamples } from "./data.js";
import { IMAGE_TYPES, imageExamples, readImageFolder } from "./images.js";
import { HttpError, Server, Unauthorized } from "./protocol.js";
import { decodeModel, encodeModel, encodeUpdate } from "./safetensors.js";
import {
  SecAggAborted,
  SecAggClient,
  SecAggRefused,
  encode,
  parsePlan,
  uniformSource,
} from "./secagg.js";
import { SpecModel } from "./spec.js";
import * as store from "./store.js";
import {
  UnsupportedTask,
  checkTraining,
  clientHalf,
  evaluate,
  privatizeLocally,
  secureParts,
  shuffler,
  trainLocal,
} from "./train.js";

const $ = (id) => document.getElementById(id);
const query = new URLSearchParams(location.search);
const fragment = new URLSearchParams(location.hash.slice(1));
const param = (name) => fragment.get(name) ?? query.get(name);
const show = (id, text) => ($(id).textContent = text);

let examples = null; // {x, y, n, shape, source} or, for images, {n, y, inputs(shape), …}
const drawings = []; // [{blob, name, label}] drawn on the page
let identity = store.loadIdentity();
let running = false; // the loop should go on
let looping = false; // the loop is running (it ends after its current step)
let retries = 0;
let accepted = 0;
let modelCache = null; // {etag, bytes} of the last model file
let network = null; // {key, model} for the last spec

function log(message) {
  const line = `${new Date().toLocaleTimeString()}  ${message}\n`;
  $("log").textContent = (line + $("log").textContent).slice(0, 20000);
}

// The last problem stays shown (with its time) until the next one or a new start.
function showError(message) {
  $("error").textContent = message ? `${new Date().toLocaleTimeString()}: ${message}` : "";
  $("error").classList.toggle("shown", Boolean(message));
  if (message) log(`error: ${message}`);
}

// One sentence for a person about what went wrong.
function explain(err) {
  if (err instanceof Unauthorized) {
    return err.message.startsWith("POST /v1/devices")
      ? `The server refused the enrollment secret (${err.reason}).`
      : `The server does not know this device or its token (${err.reason}). Enter the enrollment secret to enroll again.`;
  }
  if (err instanceof HttpError) {
    const what =
      {
        400: "The server refused the request as invalid",
        404: "The server has no such resource",
        409: "The server refused it as stale or too late",
        413: "The update is larger than the server accepts",
      }[err.status] ?? `The server answered ${err.status}`;
    return `${what}: ${err.reason} (${err.message.split(":")[0]}).`;
  }
  return `${err.name === "Error" ? "" : `${err.name}: `}${err.message}`;
}

const server = new Server({
  onRetry: ({ what, reason, delay, attempt }) => {
    retries += 1;
    show("retries", String(retries));
    show("status", `${what} failed (${reason}); retry ${attempt} in ${delay.toFixed(1)} s`);
    log(`${what} failed (${reason}); retrying in ${delay.toFixed(1)} s`);
  },
});

function refreshButtons() {
  const credentials = identity || $("secret").value;
  $("start").disabled = looping || !examples || !credentials;
  $("stop").disabled = !running;
}

function showDevice() {
  show("device-id", identity ? identity.device_id : "not enrolled");
}

async function enroll() {
  const secret = $("secret").value;
  if (!secret) throw new Error("This browser has not enrolled yet: enter the enrollment secret.");
  show("status", "enrolling");
  const enrolled = await server.enroll(secret, "browser");
  await store.forgetDevice();
  store.saveIdentity(enrolled);
  identity = enrolled;
  showDevice();
  log(`enrolled as device ${identity.device_id}`);
}

// ---- one task ------------------------------------------------------------------------

function modelFor(spec) {
  const key = JSON.stringify(spec);
  if (network?.key !== key) network = { key, model: new SpecModel(tf, spec) };
  return network.model;
}

async function loadOwnState(model) {
  const bytes = await store.loadClientState();
  if (!bytes) return null;
  try {
    return { c: model.fromTorch(decodeModel(bytes).extras.c ?? {}, "saved control variate") };
  } catch (err) {
    log(`the saved strategy state does not fit this model (${err.message}): starting from zero`);
    return null;
  }
}

// The examples as the model's input: images are decoded and resized once per shape.
async function inputsFor(model) {
  if (!examples.inputs) return examples;
  show("status", `preparing ${examples.n} images for the model's input [${model.inputShape}]`);
  return examples.inputs(model.inputShape, (done, n) =>
    show("status", `preparing images: ${done} of ${n}`),
  );
}

// The examples this page trains on now (for the tests): their values as the model with
// `inputShape` takes them.
export async function currentExamples(inputShape) {
  if (!examples) return null;
  const data = examples.inputs ? await examples.inputs(inputShape) : examples;
  const kind = examples.kind ?? "array";
  return { x: data.x, y: data.y, n: data.n, source: examples.source, kind };
}

// What this device's owner demands of every round before it trains (#require=…):
// "secure-aggregation" (the server sees only a sum of masked updates) and "noise" (DP noise
// added on the device: local DP, or distributed DP under secure aggregation; central DP
// does not count, the server adds that noise itself).
// min_noise: the least noise the device must add itself, as a multiple of its update's
// sensitivity (fedge client --min-noise; local DP's z, under distributed DP √μᵢ/B).
const REQUIREMENTS = ["secure-aggregation", "noise"];
const required = (param("require") ?? "").split(",").filter(Boolean);
const minNoise = Number(param("min_noise") ?? 0);

class PrivacyRefused extends Error {
  constructor(message) {
    super(message);
    this.name = "PrivacyRefused";
  }
}

// What `task`'s round lacks of `required`, in words (fedge.federation.client).
function unmetRequirements(task) {
  const missing = [];
  const plan = task.secure_aggregation;
  if (required.includes("secure-aggregation") && !plan)
    missing.push("secure aggregation (the server would see this device's update)");
  const noise = ownNoise(task);
  if (required.includes("noise") && noise === 0)
    missing.push(
      "noise added on the device (local DP, or distributed DP under secure aggregation)",
    );
  if (minNoise > 0 && !(noise >= minNoise))
    missing.push(
      `noise of at least ${minNoise} times the update's sensitivity added on the device ` +
        `(it would add ${noise.toPrecision(3)})`,
    );
  return missing;
}

// The noise this device itself adds in `task`'s round, relative to its update's sensitivity
// (fedge.federation.client.own_noise).
function ownNoise(task) {
  if (task.local_dp != null) return Number(task.local_dp.noise_multiplier) || 0;
  const dp = task.secure_aggregation?.distributed_dp;
  if (dp == null) return 0;
  const noise = Math.sqrt(dp.client_variance) / dp.norm_bound;
  return Number.isFinite(noise) ? noise : 0;
}

async function train(task) {
  const missing = unmetRequirements(task);
  if (missing.length) {
    const asked = [];
    if (required.length) asked.push(`require=${required.join(",")}`);
    if (minNoise > 0) asked.push(`min_noise=${minNoise}`);
    throw new PrivacyRefused(
      `Round ${task.round} has no ${missing.join(" and no ")}, which this device requires ` +
        `(${asked.join(", ")}): it trains nothing and sends nothing.`,
    );
  }
  // Refuse a secure plan this page cannot take part in before training, not after.
  const plan = task.secure_aggregation ? parsePlan(task.secure_aggregation) : null;
  const half = clientHalf(task.strategy);
  const training = checkTraining(task.training);
  const model = modelFor(task.spec);
  const data = await inputsFor(model);
  checkExamples(data, model.inputShape, model.numClasses);
  show("round", `${task.round} (training round ${task.training_round})`);
  show("strategy", half.name);
  show("status", `round ${task.round}: downloading model version ${task.model_version}`);
  modelCache = await server.download(identity.token, task.model_url, modelCache);
  const file = decodeModel(modelCache.bytes);
  if (file.modelVersion !== task.model_version) {
    throw new Error(`asked for model version ${task.model_version}, got ${file.modelVersion}`);
  }
  show("model-version", String(file.modelVersion));
  const keep = [];
  let secure = null; // {plan, contribution, state} of a secure round
  try {
    const weights = model.fromTorch(file.params);
    keep.push(weights);
    const extras = {};
    if (half.scaffold) {
      if (!file.extras.c) throw new Error("the SCAFFOLD model file has no control variate c");
      extras.c = model.fromTorch(file.extras.c, "control variate c");
      keep.push(extras.c);
    }
    const clientState = half.scaffold ? await loadOwnState(model) : null;
    if (clientState) keep.push(clientState.c);
    const x = model.inputs(data.x, data.n);
    keep.push(x);
    const before = await evaluate(tf, model, weights, x, data.y, data.n);
    log(
      `round ${task.round}: model version ${task.model_version} has accuracy ${(100 * before.accuracy).toFixed(1)}% on your ${data.n} examples`,
    );
    show("accuracy", `${(100 * before.accuracy).toFixed(1)}% before training`);
    show("status", `round ${task.round}: training on ${data.n} examples`);
    const started = performance.now();
    const result = await trainLocal(tf, {
      model,
      weights,
      x,
      y: data.y,
      n: data.n,
      training,
      half,
      extras,
      clientState,
      order: shuffler(task.seed, task.training_round, identity.device_id, data.n),
      progress: ({ step, steps, epoch, loss }) => {
        show("progress", `epoch ${epoch} of ${training.epochs}, step ${step} of ${steps}`);
        $("progress-bar").max = steps;
        $("progress-bar").value = step;
        show("loss", loss.toFixed(4));
      },
    });
    keep.push(result.weights, Object.values(result.extras), result.clientState?.c ?? []);
    const seconds = (performance.now() - started) / 1000;
    const after = await evaluate(tf, model, result.weights, x, data.y, data.n);
    show("loss", `${result.metrics.train_loss.toFixed(4)} (mean over the round)`);
    show(
      "accuracy",
      `${(100 * after.accuracy).toFixed(1)}% after training (${(100 * before.accuracy).toFixed(1)}% before)`,
    );
    log(
      `round ${task.round}: ${result.numSteps} steps in ${seconds.toFixed(1)} s, loss ${result.metrics.train_loss.toFixed(4)}`,
    );
    const extrasOut = {};
    for (const [group, tensors] of Object.entries(result.extras))
      extrasOut[group] = model.toTorch(tensors);
    let params = model.toTorch(result.weights);
    if (task.local_dp) {
      // local DP: clipped and noised here, before the update is stored or sent
      params = privatizeLocally(file.params, params, task.local_dp, uniformSource());
      log(
        `round ${task.round}: local DP: delta clipped to ${task.local_dp.clip_norm}, ` +
          `Gaussian noise of std ${task.local_dp.noise_multiplier * task.local_dp.clip_norm} added`,
      );
    }
    const state = result.clientState
      ? encodeModel({}, { c: model.toTorch(result.clientState.c) }, task.model_version)
      : null;
    if (plan) {
      const update = { params, extras: extrasOut, numSamples: data.n, numSteps: result.numSteps };
      const contribution = secureParts(plan, half, training, file.params, update);
      secure = { plan, contribution, state };
    } else {
      const body = encodeUpdate(
        {
          params,
          extras: extrasOut,
          numSamples: data.n,
          numSteps: result.numSteps,
          metrics: result.metrics,
        },
        { round: task.round, modelVersion: task.model_version },
      );
      // (crypto.randomUUID exists only on HTTPS pages; getRandomValues everywhere.)
      const key = Array.from(crypto.getRandomValues(new Uint8Array(16)), (v) =>
        v.toString(16).padStart(2, "0"),
      ).join("");
      await store.savePending({ url: task.upload_url, key, round: task.round, body, state });
    }
  } finally {
    tf.dispose(keep);
  }
  if (secure) await secureRound(task, secure);
  else await uploadPending();
}

// ---- secure aggregation ----------------------------------------------------------------

// Take part in the round's SecAgg+ stages (fedge/federation/client.py _secure_round): post
// the keys, then ask for each stage's input and post the answer, until the round ends.
async function secureRound(task, { plan, contribution, state }) {
  const round = task.round;
  const encoded = encode(plan, contribution.parts);
  const clipped = encoded.clipped + (contribution.capped ? 1 : 0);
  if (clipped) {
    log(
      `round ${round}: ${clipped} values were outside the secure aggregation range ` +
        "and were clipped",
    );
  }
  const protocol = await SecAggClient.create(identity.device_id, plan);
  const base = task.secagg_url;
  const headers = Server.auth(identity.token);
  const post = async (stage, message) => {
    const binary = message instanceof Uint8Array;
    const type = binary ? "application/octet-stream" : "application/json";
    const response = await server.request("POST", `${base}/${stage}`, {
      headers: { ...headers, "Content-Type": type },
      body: binary ? message : JSON.stringify(message),
    });
    if (response.status === 409) {
      log(`round ${round}: the ${stage} message came too late (${(await response.json()).error})`);
      return false;
    }
    return true;
  };
  const advertise = { model_version: task.model_version, keys: await protocol.advertise() };
  if (!(await post("advertise", advertise))) return;
  const noise = plan.distributedDp
    ? `, adding Skellam noise of variance ${plan.distributedDp.clientVariance.toPrecision(4)}`
    : "";
  log(
    `round ${round}: keys sent; secure aggregation under way (${plan.degree} neighbours, ` +
      `threshold ${plan.threshold}${noise})`,
  );
  show("status", `round ${round}: secure aggregation, waiting for the other devices' keys`);
  const wait = Number(param("wait") ?? 10);
  let summed = false;
  for (;;) {
    const response = await server.request("GET", `${base}?wait=${wait}`, {
      headers,
      timeout: server.timeout + wait,
    });
    const info = await response.json();
    if (response.status === 409) {
      log(`round ${round}: ${info.error}`);
      return;
    }
    const stage = info.stage;
    if (stage === "finished") {
      if (info.status === "closed" && summed) {
        if (state) await store.saveClientState(state);
        accepted += 1;
        show("accepted", String(accepted));
        log(`round ${round}: closed with this device's update in the sum`);
        show("status", `round ${round}: closed with this device's update in the secure sum`);
      } else {
        log(`round ${round}: ${info.status} without this device's update`);
      }
      return;
    }
    if (info.excluded) {
      log(`round ${round}: dropped from the secure round at stage "${stage}"`);
      return;
    }
    if (info.waiting) continue;
    show("status", `round ${round}: secure aggregation, stage "${stage}"`);
    let message;
    try {
      if (stage === "share") message = { shares: await protocol.share(info.neighbours) };
      else if (stage === "masked") message = await protocol.masked(info.shares, encoded.values);
      else if (stage === "confirm") {
        summed = Array.isArray(info.survivors) && info.survivors.includes(identity.device_id);
        message = { confirmations: await protocol.confirm(info) };
      } else message = await protocol.unmask(info.confirmations);
    } catch (err) {
      if (!(err instanceof SecAggRefused || err instanceof SecAggAborted)) throw err;
      showError(`Round ${round}: refusing to go on with secure aggregation: ${err.message}`);
      return;
    }
    if (!(await post(stage, message))) return;
  }
}

// Upload the update kept in storage; its strategy state counts only once the server has it.
async function uploadPending() {
  const pending = await store.loadPending();
  show("status", `round ${pending.round}: uploading the update`);
  let answer;
  try {
    answer = await server.upload(identity.token, pending.url, pending.key, pending.body);
  } catch (err) {
    await store.settlePending(false);
    if (err instanceof HttpError && !(err instanceof Unauthorized)) {
      showError(`Round ${pending.round}: the update was refused. ${explain(err)}`);
      return;
    }
    throw err;
  }
  if (answer.status === 409) {
    await store.settlePending(false);
    showError(
      `Round ${pending.round}: too late, the server did not take the update (409: ${answer.body.error}).`,
    );
    return;
  }
  await store.settlePending(true);
  accepted += 1;
  show("accepted", String(accepted));
  log(
    `round ${pending.round}: update accepted${answer.body.duplicate ? " (it had arrived before)" : ""}`,
  );
  show("status", `round ${pending.round}: update accepted`);
}

// ---- the loop ------------------------------------------------------------------------

const sleep = (seconds) => new Promise((resolve) => setTimeout(resolve, seconds * 1000));

async function step() {
  if (!identity) await enroll();
  if (await store.loadPending()) {
    await uploadPending();
    return;
  }
  show("status", "checking in");
  const answer = await server.checkin(identity.token, Number(param("wait") ?? 10));
  if (answer.status === "finished") {
    show(
      "status",
      `finished: the federation trained all its rounds (model version ${answer.model_version})`,
    );
    log("the experiment is finished");
    running = false;
    return;
  }
  if (answer.status === "wait") {
    show(
      "status",
      `waiting for a round (${answer.reason}); next check-in in ${answer.retry_after.toFixed(1)} s`,
    );
    await sleep(answer.retry_after);
    return;
  }
  await train(answer);
}

async function run() {
  if (looping) return;
  looping = running = true;
  refreshButtons();
  while (running) {
    try {
      await step();
    } catch (err) {
      if (
        err instanceof Unauthorized &&
        identity &&
        $("secret").value &&
        !err.message.startsWith("POST /v1/devices")
      ) {
        log(`the server does not know this device (${err.reason}): enrolling again`);
        identity = null;
        continue;
      }
      showError(explain(err));
      running = false;
      show("status", "stopped");
    }
  }
  looping = false;
  if (!$("status").textContent.startsWith("finished")) show("status", "stopped");
  refreshButtons();
}

// ---- set-up --------------------------------------------------------------------------

function describe(set, demo) {
  const info = $("data-info");
  info.textContent = "";
  const what = set.kind === "images" ? "images" : `examples of shape [${set.shape}]`;
  const count = set.kind === "images" ? `${set.n} examples (${what})` : `${set.n} ${what}`;
  info.append(`${count} from ${set.source}`);
  if (set.kind === "images") {
    const classes = new Set(set.y).size;
    const plural = classes > 1 ? "es" : "";
    info.append(` in ${classes} class${plural}; resized to the model's input when a round starts`);
  }
  if (set.note) info.append(`. ${set.note}`);
  if (demo) {
    const tag = document.createElement("span");
    tag.className = "demo";
    tag.textContent = "demo data from the page's URL, not this device's own";
    info.append(" ", tag);
  }
}

// Use the examples that `read()` gives (a promise); on failure keep none and say why.
async function useExamples(read, source, demo = false) {
  try {
    examples = await read();
    describe(examples, demo);
    showError("");
  } catch (err) {
    examples = null;
    $("data-info").textContent = "no examples";
    showError(`Cannot use ${source}: ${err.message}`);
  }
  refreshButtons();
}

// Files from the file dialog or the folder dialog: one .npz or JSON file, or images with
// a labels.csv.
function useFiles(fileList) {
  const files = Array.from(fileList);
  if (!files.length) return null;
  const images = files.some((f) => IMAGE_TYPES.test(f.name) || /\.csv$/i.test(f.name));
  if (images) return useExamples(() => readImageFolder(files), "the picked images");
  if (files.length > 1) {
    return useExamples(async () => {
      throw new DataError(
        `${files.length} files picked: pick one .npz or .json file, or images with a labels.csv`,
      );
    }, "the picked files");
  }
  const [file] = files;
  return useExamples(
    async () => readExamples(new Uint8Array(await file.arrayBuffer()), file.name),
    file.name,
  );
}

// ---- drawing examples -----------------------------------------------------------------

// A canvas to draw on in white over black (as MNIST and Fashion-MNIST images are); each
// drawing, with its label, is an image example (resized to the model's input like a file).
function setUpDrawing() {
  const pad = $("pad");
  const ctx = pad.getContext("2d");
  const clear = () => {
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, pad.width, pad.height);
    pad.dataset.ink = "0";
  };
  clear();
  let last = null;
  const at = (event) => {
    const box = pad.getBoundingClientRect();
    return [
      ((event.clientX - box.left) * pad.width) / box.width,
      ((event.clientY - box.top) * pad.height) / box.height,
    ];
  };
  const stroke = (to) => {
    ctx.strokeStyle = "#fff";
    ctx.fillStyle = "#fff";
    ctx.lineWidth = pad.width / 12;
    ctx.lineCap = ctx.lineJoin = "round";
    ctx.beginPath();
    ctx.moveTo(...(last ?? to));
    ctx.lineTo(...to);
    ctx.stroke();
    last = to;
    pad.dataset.ink = "1";
  };
  pad.addEventListener("pointerdown", (event) => {
    pad.setPointerCapture(event.pointerId);
    last = null;
    stroke(at(event));
  });
  pad.addEventListener("pointermove", (event) => {
    if (pad.hasPointerCapture(event.pointerId)) stroke(at(event));
  });
  pad.addEventListener("pointerup", () => (last = null));
  $("pad-clear").addEventListener("click", clear);
  $("pad-add").addEventListener("click", async () => {
    const label = $("pad-label").value.trim();
    if (!/^\d{1,9}$/.test(label)) {
      const got = JSON.stringify(label);
      showError(`Label the drawing with its class number (0, 1, 2, …), not ${got}.`);
      return;
    }
    if (pad.dataset.ink !== "1") {
      showError("Draw something first.");
      return;
    }
    const blob = await new Promise((resolve) => pad.toBlob(resolve, "image/png"));
    drawings.push({ blob, name: `drawing ${drawings.length + 1}`, label: Number(label) });
    clear();
    show("pad-count", `${drawings.length} drawn`);
    await useExamples(
      async () =>
        imageExamples(
          drawings.map(({ blob: b, name }) => ({ blob: b, name })),
          drawings.map((d) => d.label),
          "your drawings",
        ),
      "the drawings",
    );
  });
}

async function main() {
  if (!(minNoise >= 0 && Number.isFinite(minNoise))) {
    const given = param("min_noise");
    throw new Error(`min_noise in the page's address must be a number >= 0, not ${given}`);
  }
  const unknown = required.filter((r) => !REQUIREMENTS.includes(r));
  if (unknown.length) {
    throw new Error(
      `unknown requirement ${unknown.join(", ")} in the page's address: choose from ` +
        REQUIREMENTS.join(", "),
    );
  }
  if (param("secret")) {
    $("secret").value = param("secret");
    // Keep the secret out of the address bar and the history from now on.
    query.delete("secret");
    fragment.delete("secret");
    const search = query.size ? `?${query}` : "";
    history.replaceState(
      null,
      "",
      `${location.pathname}${search}${fragment.size ? `#${fragment}` : ""}`,
    );
  }
  show("backend", "choosing a backend");
  const backend = await chooseBackend(tf, param("backend") ?? "auto", log);
  show("backend", `TensorFlow.js ${tf.version.tfjs} on ${backend}`);
  showDevice();
  if (identity) log(`resuming as device ${identity.device_id}`);
  show("status", identity ? "enrolled; pick your examples to train" : "not enrolled");
  $("secret").addEventListener("input", refreshButtons);
  for (const id of ["data-file", "data-folder"])
    $(id).addEventListener("change", () => useFiles($(id).files));
  setUpDrawing();
  $("start").addEventListener("click", () => {
    showError("");
    run();
  });
  $("stop").addEventListener("click", () => {
    running = false;
    show("status", "stopping after the current step");
    refreshButtons();
  });
  $("join").addEventListener("submit", (event) => event.preventDefault());
  const url = param("data");
  if (url) {
    const source = url.startsWith("data:") ? "a data: URL" : url;
    await useExamples(
      async () => {
        const response = await fetch(url, { cache: "no-store" });
        if (!response.ok) throw new Error(`${response.status} ${response.statusText}`);
        return readExamples(new Uint8Array(await response.arrayBuffer()), source);
      },
      `the examples at ${source}`,
      true,
    );
    if (examples && (identity || $("secret").value)) run();
  }
  refreshButtons();
}

main().catch((err) => showError(explain(err)));
