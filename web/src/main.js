// The browser client's page: a device of a fedge federation, like `fedge client`
// (fedge/federation/client.py), with the protocol in protocol.js, the model in spec.js,
// the local training in train.js and its storage in store.js.
//
// Parameters, in the URL's fragment (#secret=…&data=…, never sent to the server) or its
// query: secret (the enrollment secret), data (the URL of an examples file: a data: URL
// or a file on this server — for demos; the page says so), backend (a TensorFlow.js
// backend: cpu or webgl; by default webgl where it computes in float32, else cpu), wait (long-poll seconds, default 10). With both
// examples and credentials from the URL the page starts on its own.

import * as tf from "./tf.fesm.min.js";
import { checkExamples, readExamples } from "./data.js";
import { HttpError, Server, Unauthorized } from "./protocol.js";
import { decodeModel, encodeModel, encodeUpdate } from "./safetensors.js";
import { SpecModel } from "./spec.js";
import * as store from "./store.js";
import { checkTraining, clientHalf, evaluate, shuffler, trainLocal } from "./train.js";

const $ = (id) => document.getElementById(id);
const query = new URLSearchParams(location.search);
const fragment = new URLSearchParams(location.hash.slice(1));
const param = (name) => fragment.get(name) ?? query.get(name);
const show = (id, text) => ($(id).textContent = text);

let examples = null;
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

async function train(task) {
  const half = clientHalf(task.strategy);
  const training = checkTraining(task.training);
  const model = modelFor(task.spec);
  checkExamples(examples, model.inputShape, model.numClasses);
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
    const x = model.inputs(examples.x, examples.n);
    keep.push(x);
    const before = await evaluate(tf, model, weights, x, examples.y, examples.n);
    log(
      `round ${task.round}: model version ${task.model_version} has accuracy ${(100 * before.accuracy).toFixed(1)}% on your ${examples.n} examples`,
    );
    show("accuracy", `${(100 * before.accuracy).toFixed(1)}% before training`);
    show("status", `round ${task.round}: training on ${examples.n} examples`);
    const started = performance.now();
    const result = await trainLocal(tf, {
      model,
      weights,
      x,
      y: examples.y,
      n: examples.n,
      training,
      half,
      extras,
      clientState,
      order: shuffler(task.seed, task.training_round, identity.device_id, examples.n),
      progress: ({ step, steps, epoch, loss }) => {
        show("progress", `epoch ${epoch} of ${training.epochs}, step ${step} of ${steps}`);
        $("progress-bar").max = steps;
        $("progress-bar").value = step;
        show("loss", loss.toFixed(4));
      },
    });
    keep.push(result.weights, Object.values(result.extras), result.clientState?.c ?? []);
    const seconds = (performance.now() - started) / 1000;
    const after = await evaluate(tf, model, result.weights, x, examples.y, examples.n);
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
    const body = encodeUpdate(
      {
        params: model.toTorch(result.weights),
        extras: extrasOut,
        numSamples: examples.n,
        numSteps: result.numSteps,
        metrics: result.metrics,
      },
      { round: task.round, modelVersion: task.model_version },
    );
    const state = result.clientState
      ? encodeModel({}, { c: model.toTorch(result.clientState.c) }, task.model_version)
      : null;
    // (crypto.randomUUID exists only on HTTPS pages; getRandomValues everywhere.)
    const key = Array.from(crypto.getRandomValues(new Uint8Array(16)), (v) =>
      v.toString(16).padStart(2, "0"),
    ).join("");
    await store.savePending({ url: task.upload_url, key, round: task.round, body, state });
  } finally {
    tf.dispose(keep);
  }
  await uploadPending();
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

async function useExamples(bytes, source, demo = false) {
  try {
    examples = await readExamples(bytes, source);
    const label = demo ? " <span class=demo>demo data from the page's URL</span>" : "";
    $("data-info").innerHTML = "";
    $("data-info").append(`${examples.n} examples of shape [${examples.shape}] from ${source}`);
    if (demo) $("data-info").insertAdjacentHTML("beforeend", label);
    showError("");
  } catch (err) {
    examples = null;
    $("data-info").textContent = "no examples";
    showError(`Cannot read ${source}: ${err.message}`);
  }
  refreshButtons();
}

// WebGL when the browser renders float32 textures (training in full precision), else the
// plain JavaScript backend; `wanted` forces one ("cpu" or "webgl").
async function chooseBackend(wanted) {
  const usable = async (name) => {
    try {
      if (!(await tf.setBackend(name))) return false;
      await tf.ready();
      return name !== "webgl" || tf.env().getBool("WEBGL_RENDER_FLOAT32_CAPABLE");
    } catch {
      return false;
    }
  };
  if (wanted !== "auto" && (await usable(wanted))) return;
  if (wanted !== "auto") log(`backend ${wanted} is not available here`);
  if (wanted !== "cpu" && (await usable("webgl"))) return;
  await tf.setBackend("cpu");
  await tf.ready();
}

async function main() {
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
  await chooseBackend(param("backend") ?? "auto");
  show("backend", `TensorFlow.js ${tf.version.tfjs} on ${tf.getBackend()}`);
  showDevice();
  if (identity) log(`resuming as device ${identity.device_id}`);
  show("status", identity ? "enrolled; pick your examples to train" : "not enrolled");
  $("secret").addEventListener("input", refreshButtons);
  $("data-file").addEventListener("change", async () => {
    const file = $("data-file").files[0];
    if (file) await useExamples(new Uint8Array(await file.arrayBuffer()), file.name);
  });
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
    try {
      const response = await fetch(url, { cache: "no-store" });
      if (!response.ok) throw new Error(`${response.status} ${response.statusText}`);
      await useExamples(
        new Uint8Array(await response.arrayBuffer()),
        url.startsWith("data:") ? "a data: URL" : url,
        true,
      );
    } catch (err) {
      showError(`Cannot load the examples at ${url}: ${err.message}`);
    }
    if (examples && (identity || $("secret").value)) run();
  }
  refreshButtons();
}

main().catch((err) => showError(explain(err)));
