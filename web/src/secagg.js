// SecAgg+ secure aggregation on the browser client: the client side of
// fedge/privacy/secagg/protocol.py, byte-compatible with it, from WebCrypto and BigInt only.
//
// The building blocks are fedge/privacy/secagg/crypto.py's:
// * X25519 key pairs whose private key is a field element below p = 2^255 − 19 (so that it
//   can be Shamir-shared), imported as PKCS#8; the public key read from the JWK export.
// * HKDF-SHA256 (salt: the round context, info: a purpose label) → 32-byte keys.
// * AES-256-GCM: a random 12-byte nonce, then the ciphertext and its 16-byte tag; the
//   associated data binds round context, stage, sender and receiver.
// * Masks: the AES-256-CTR keystream of a 32-byte seed (zero initial counter block, the whole
//   128-bit block counts) read as little-endian uint32 (b ≤ 32) or uint64 (b > 32).
// * Shamir over GF(p).
//
// Vectors are kept as Uint32Array words (two per value when b > 32, low word first): adding
// masks word by word with an explicit carry is much faster than BigInt element arithmetic,
// and typed-array stores wrap modulo 2^32 by themselves. That relies on a little-endian
// platform (every browser fedge targets); create() refuses a big-endian one.
//
// Every message received is validated as fedge/privacy/secagg/messages.py does; a malformed
// or protocol-breaking one throws SecAggRefused, never a TypeError. A client that refused
// (or aborted) at one stage takes no further part in the round: later stages are refused.
//
// With distributed DP (the plan's `distributed_dp`) encode() adds the device's share of the
// noise before masking (skellam.js), so that the server only ever unmasks a noisy sum.

import { encodeDistributed, parseDistributed } from "./skellam.js";

export class SecAggRefused extends Error {
  constructor(message) {
    super(message);
    this.name = "SecAggRefused";
  }
}

export class SecAggAborted extends Error {
  constructor(message) {
    super(message);
    this.name = "SecAggAborted";
  }
}

export class SecAggUnsupported extends Error {
  constructor(message) {
    super(message);
    this.name = "SecAggUnsupported";
  }
}

export const FIELD_PRIME = (1n << 255n) - 19n;
const SECRET_BYTES = 32;
const NONCE_BYTES = 12;
const TAG_BYTES = 16;
const MAX_ID_LENGTH = 64;
const MAX_SEALED = 256; // bytes of one sealed share or confirmation (messages.py)
const STAGES = ["advertise", "share", "masked", "confirm", "unmask"];

const utf8 = new TextEncoder();
const CHANNEL = utf8.encode("fedge secagg channel v1");
const PAIR_MASK = utf8.encode("fedge secagg pair mask v1");
const SELF_MASK = utf8.encode("fedge secagg self mask v1");
// PKCS#8 PrivateKeyInfo of an X25519 key (RFC 8410) up to the 32 secret bytes.
const PKCS8_X25519 = Uint8Array.from([
  0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x04, 0x22, 0x04, 0x20,
]);
const LITTLE_ENDIAN = new Uint8Array(Uint32Array.of(1).buffer)[0] === 1;
const subtle = globalThis.crypto?.subtle;
const NO_WEBCRYPTO =
  "secure aggregation needs WebCrypto, which browsers give only to pages served over HTTPS " +
  "or from localhost: open the client page over HTTPS";

// --- bytes, base64, ids ------------------------------------------------------------------

function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let offset = 0;
  for (const p of parts) {
    out.set(p, offset);
    offset += p.length;
  }
  return out;
}

function equalBytes(a, b) {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i] ^ b[i];
  return diff === 0;
}

export function toB64(bytes) {
  let s = "";
  for (let i = 0; i < bytes.length; i += 32768) {
    s += String.fromCharCode(...bytes.subarray(i, i + 32768));
  }
  return btoa(s);
}

// Python's base64.b64decode(validate=True): the standard alphabet, padded; atob alone would
// also take whitespace and missing padding.
const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

function fromB64(text, what, limit = MAX_SEALED) {
  if (typeof text !== "string" || text.length > 2 * limit) {
    throw new SecAggRefused(`${what} must be a base64 string of at most ${limit} bytes`);
  }
  if (!BASE64.test(text)) throw new SecAggRefused(`${what} is not valid base64`);
  return Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
}

function fromB64url(text) {
  const std = text.replace(/-/g, "+").replace(/_/g, "/");
  return Uint8Array.from(atob(std + "=".repeat((4 - (std.length % 4)) % 4)), (c) =>
    c.charCodeAt(0),
  );
}

const isObject = (v) => v !== null && typeof v === "object" && !Array.isArray(v);

// Python counts a str's length in code points, JavaScript in UTF-16 units.
const codePoints = (s) => {
  let n = 0;
  for (const _ of s) n++;
  return n;
};
const isId = (v) => typeof v === "string" && v.length > 0 && codePoints(v) <= MAX_ID_LENGTH;

// a < b as Python compares str (by code point); JavaScript's < compares UTF-16 units, which
// orders characters above U+FFFF differently. The sign of a pair mask and the order of the
// view digest depend on it.
function before(a, b) {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const x = a.codePointAt(i);
    const y = b.codePointAt(i);
    if (x !== y) return x < y;
  }
  return a.length < b.length;
}
const byCodePoint = (a, b) => (a === b ? 0 : before(a, b) ? -1 : 1);

// An object's own keys as device ids (messages.py _ids), at most `limit` of them.
function ids(mapping, what, limit) {
  if (!isObject(mapping) || Object.keys(mapping).length > limit) {
    throw new SecAggRefused(`${what} must be an object with at most ${limit} entries`);
  }
  const keys = Object.keys(mapping);
  if (!keys.every(isId)) {
    throw new SecAggRefused(`${what}: device ids are strings of 1 to ${MAX_ID_LENGTH} characters`);
  }
  return keys;
}

// out[key] = value even for a key such as "__proto__" (a device id is any string).
function put(out, key, value) {
  Object.defineProperty(out, key, { value, enumerable: true, writable: true, configurable: true });
}

// --- field elements ----------------------------------------------------------------------

function fromLE(bytes) {
  let hex = "";
  for (let i = bytes.length - 1; i >= 0; i--) hex += bytes[i].toString(16).padStart(2, "0");
  return BigInt("0x" + (hex || "0"));
}

// A field element as the 32 little-endian bytes of crypto.py's secret_bytes.
export function secretBytes(value) {
  const out = new Uint8Array(SECRET_BYTES);
  for (let i = 0; i < SECRET_BYTES; i++) {
    out[i] = Number(value & 0xffn);
    value >>= 8n;
  }
  return out;
}

// A uniform field element: 32 random bytes, the top bit cleared, rejected unless below p.
export function randomSecret() {
  const buf = new Uint8Array(SECRET_BYTES);
  for (;;) {
    crypto.getRandomValues(buf);
    buf[SECRET_BYTES - 1] &= 0x7f;
    const value = fromLE(buf);
    if (value < FIELD_PRIME) return value;
  }
}

// Shares of `secret` at the points `xs` (BigInts, distinct, nonzero); any `threshold` of
// them rebuild it (crypto.py shamir_split).
export function shamirSplit(secret, xs, threshold) {
  if (!(secret >= 0n && secret < FIELD_PRIME)) {
    throw new RangeError("the secret must be a field element");
  }
  if (!(threshold >= 1 && threshold <= xs.length)) {
    throw new RangeError(`threshold ${threshold} needs between 1 and ${xs.length} shares`);
  }
  const coefficients = [secret];
  for (let i = 1; i < threshold; i++) coefficients.push(randomSecret());
  return xs.map((x) => {
    let acc = 0n;
    for (let i = coefficients.length - 1; i >= 0; i--) {
      acc = (acc * x + coefficients[i]) % FIELD_PRIME; // Horner
    }
    return acc;
  });
}

// --- WebCrypto primitives ----------------------------------------------------------------

// An X25519 key pair whose private key is the field element `secret`.
export class KeyPair {
  constructor(secret, privateKey, publicKey) {
    this.secret = secret;
    this.private = privateKey;
    this.public = publicKey;
  }

  static async create(secret = randomSecret()) {
    const der = concat(PKCS8_X25519, secretBytes(secret));
    const key = await subtle.importKey("pkcs8", der, { name: "X25519" }, true, ["deriveBits"]);
    const jwk = await subtle.exportKey("jwk", key);
    return new KeyPair(secret, key, fromB64url(jwk.x));
  }

  // The raw X25519 shared secret with `peerPublic` (32 bytes); a low-order point, whose
  // shared secret is all zero, is refused as `cryptography` refuses it.
  async agree(peerPublic) {
    let shared;
    try {
      const peer = await subtle.importKey("raw", peerPublic, { name: "X25519" }, false, []);
      const params = { name: "X25519", public: peer };
      shared = new Uint8Array(await subtle.deriveBits(params, this.private, 256));
    } catch (err) {
      throw new SecAggRefused(`invalid X25519 public key: ${err.message || err.name}`);
    }
    if (shared.every((b) => b === 0)) {
      throw new SecAggRefused("invalid X25519 public key: a low-order point (all-zero secret)");
    }
    return shared;
  }
}

// A 256-bit key for `purpose` in the round `context` (HKDF-SHA256).
export async function deriveKey(shared, context, purpose) {
  const ikm = await subtle.importKey("raw", shared, "HKDF", false, ["deriveBits"]);
  const params = { name: "HKDF", hash: "SHA-256", salt: context, info: purpose };
  return new Uint8Array(await subtle.deriveBits(params, ikm, 256));
}

// Each part (bytes, or a string as UTF-8) prefixed with its uint32 little-endian length.
function fields(parts) {
  return concat(
    ...parts.map((part) => {
      const raw = typeof part === "string" ? utf8.encode(part) : part;
      const out = new Uint8Array(4 + raw.length);
      new DataView(out.buffer).setUint32(0, raw.length, true);
      out.set(raw, 4);
      return out;
    }),
  );
}

export function associatedData(context, stage, sender, receiver) {
  return fields([context, stage, sender, receiver]);
}

// SHA-256 of length-prefixed parts (crypto.py digest).
export async function digest(...parts) {
  return new Uint8Array(await subtle.digest("SHA-256", fields(parts)));
}

export async function seal(key, plaintext, ad) {
  const nonce = crypto.getRandomValues(new Uint8Array(NONCE_BYTES));
  const aes = await subtle.importKey("raw", key, "AES-GCM", false, ["encrypt"]);
  const params = { name: "AES-GCM", iv: nonce, additionalData: ad, tagLength: 128 };
  return concat(nonce, new Uint8Array(await subtle.encrypt(params, aes, plaintext)));
}

export async function openSealed(key, sealed, ad, what) {
  if (sealed.length < NONCE_BYTES + TAG_BYTES) {
    throw new SecAggRefused(`${what}: ciphertext too short`);
  }
  const aes = await subtle.importKey("raw", key, "AES-GCM", false, ["decrypt"]);
  const iv = sealed.subarray(0, NONCE_BYTES);
  const params = { name: "AES-GCM", iv, additionalData: ad, tagLength: 128 };
  try {
    return new Uint8Array(await subtle.decrypt(params, aes, sealed.subarray(NONCE_BYTES)));
  } catch {
    throw new SecAggRefused(
      `${what}: authentication failed (tampered, replayed from another round or stage, ` +
        "or not meant for this client)",
    );
  }
}

// --- masks -------------------------------------------------------------------------------

let zeros = new Uint8Array(0);

// The mask of `seed` for `length` values modulo 2^bits as Uint32Array words, unreduced: the
// AES-256-CTR keystream from a zero counter block, in one call.
async function maskWords(seed, length, bits) {
  const nbytes = length * (bits > 32 ? 8 : 4);
  if (zeros.length < nbytes) zeros = new Uint8Array(nbytes); // encrypt reads, never writes it
  const key = await subtle.importKey("raw", seed, "AES-CTR", false, ["encrypt"]);
  const params = { name: "AES-CTR", counter: new Uint8Array(16), length: 128 };
  return new Uint32Array(await subtle.encrypt(params, key, zeros.subarray(0, nbytes)));
}

// Words modulo 2^bits, in place (RoundSetup.reduce).
function reduceWords(words, bits) {
  if (bits === 32 || bits === 64) return words;
  if (bits < 32) {
    const m = 2 ** bits - 1;
    for (let i = 0; i < words.length; i++) words[i] &= m;
  } else {
    const m = 2 ** (bits - 32) - 1;
    for (let i = 1; i < words.length; i += 2) words[i] &= m;
  }
  return words;
}

// y ← y + m (sign > 0) or y − m, modulo 2^32 per value (b ≤ 32) or 2^64 (b > 32, carry
// from the low word into the high one). Uint32Array stores wrap by themselves.
function addWords(y, m, bits, sign) {
  if (bits <= 32) {
    if (sign > 0) for (let i = 0; i < y.length; i++) y[i] += m[i];
    else for (let i = 0; i < y.length; i++) y[i] -= m[i];
    return;
  }
  if (sign > 0) {
    for (let i = 0; i < y.length; i += 2) {
      const lo = y[i] + m[i];
      y[i] = lo;
      y[i + 1] += m[i + 1] + (lo > 0xffffffff ? 1 : 0);
    }
  } else {
    for (let i = 0; i < y.length; i += 2) {
      const lo = y[i] - m[i];
      y[i] = lo;
      y[i + 1] -= m[i + 1] + (lo < 0 ? 1 : 0);
    }
  }
}

// RoundSetup.prg: `length` values modulo 2^bits from `seed`, as a Uint32Array (b ≤ 32) or a
// BigUint64Array (b > 32).
export async function maskStream(seed, length, bits) {
  const words = reduceWords(await maskWords(seed, length, bits), bits);
  return bits > 32 ? new BigUint64Array(words.buffer) : words;
}

// --- the plan ----------------------------------------------------------------------------

// The task's `secure_aggregation` (RoundPlan.to_json), validated:
//   {context: Uint8Array, threshold, degree, bits, maxClients, levels, segments:
//    [{name, length, lo, hi}], length, weighting, maxWeight, clipNorm, distributedDp,
//    minSurvivors}
// `levels` is L = ⌊(2^b − 1)/max_clients⌋ as a BigInt, always (exact for every b up to 64);
// maxWeight and clipNorm are null when the plan has none; distributedDp is null, or
// skellam.js parseDistributed's {clipNorm, scale, normBound, clientVariance, minSurvivors}
// (minSurvivors is 0 without distributed DP: no smaller sum is refused).
export function parsePlan(json) {
  const bad = (why) => {
    throw new SecAggUnsupported(`the secure aggregation plan ${why}`);
  };
  if (!isObject(json)) bad("is not a JSON object");
  if (!subtle) throw new SecAggUnsupported(NO_WEBCRYPTO); // refused before training, not after
  const integer = (name, min, max = Number.MAX_SAFE_INTEGER) => {
    const v = json[name];
    if (!Number.isSafeInteger(v) || v < min || v > max) {
      bad(`needs ${name} as an integer in [${min}, ${max}], got ${JSON.stringify(v)}`);
    }
    return v;
  };
  const hex = json.context;
  if (typeof hex !== "string" || hex.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(hex)) {
    bad("needs its context as a hex string");
  }
  const context = new Uint8Array(hex.length / 2);
  for (let i = 0; i < context.length; i++) context[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  const threshold = integer("threshold", 2);
  const degree = integer("degree", threshold);
  const bits = integer("modulus_bits", 8, 64);
  const maxClients = integer("max_clients", 1);
  const levels = ((1n << BigInt(bits)) - 1n) / BigInt(maxClients);
  const noisy = json.distributed_dp !== undefined && json.distributed_dp !== null;
  if (levels < 2n && !noisy) {
    bad(`leaves fewer than 2 quantization levels for ${maxClients} clients in ${bits} bits`);
  }
  if (!Array.isArray(json.segments) || json.segments.length === 0) bad("has no segments");
  const segments = [];
  const names = new Set();
  let length = 0;
  for (const entry of json.segments) {
    const [name, n, lo, hi] = Array.isArray(entry) && entry.length === 4 ? entry : [];
    if (typeof name !== "string" || names.has(name)) bad("has a segment without a unique name");
    if (!Number.isSafeInteger(n) || n < 0) bad(`segment ${name}: the length must be an integer`);
    if (!(Number.isFinite(lo) && Number.isFinite(hi) && hi > lo)) {
      bad(`segment ${name}: the interval [${lo}, ${hi}] is not a finite, nonempty interval`);
    }
    names.add(name);
    segments.push({ name, length: n, lo, hi });
    length += n;
  }
  if (length < 1) bad("holds no values");
  if (json.weighting !== "samples" && json.weighting !== "uniform") {
    bad(`has an unknown weighting ${JSON.stringify(json.weighting)}`);
  }
  const maxWeight = json.max_weight ?? null;
  if (maxWeight !== null && !(Number.isSafeInteger(maxWeight) && maxWeight >= 1)) {
    bad("needs max_weight as a positive integer or null");
  }
  const clipNorm = json.clip_norm ?? null;
  if (clipNorm !== null && !(Number.isFinite(clipNorm) && clipNorm > 0)) {
    bad("needs clip_norm as a positive number or null");
  }
  const distributedDp = noisy
    ? parseDistributed(json.distributed_dp, segments, maxClients, bad)
    : null;
  return {
    context,
    threshold,
    degree,
    bits,
    maxClients,
    levels,
    segments,
    length,
    weighting: json.weighting,
    maxWeight,
    clipNorm,
    distributedDp,
    minSurvivors: distributedDp ? distributedDp.minSurvivors : 0,
  };
}

// ω in (0, 1] and whether the sample count exceeded max_weight (aggregation.py
// client_weight): {weight, capped}.
export function clientWeight(plan, numSamples) {
  if (plan.weighting === "uniform" || plan.maxWeight === null) return { weight: 1, capped: false };
  return {
    weight: Math.min(numSamples, plan.maxWeight) / plan.maxWeight,
    capped: numSamples > plan.maxWeight,
  };
}

// A source of uniform doubles in [0, 1) with 53 random bits each (as numpy's
// Generator.random) from crypto.getRandomValues, which fills at most 65536 bytes a call.
export function uniformSource() {
  const words = new Uint32Array(16384);
  let next = words.length;
  return () => {
    if (next === words.length) {
      crypto.getRandomValues(words);
      next = 0;
    }
    const high = words[next++] >>> 5;
    const low = words[next++] >>> 6;
    return (high * 67108864 + low) / 9007199254740992;
  };
}

// VectorCodec.encode: each value clipped to its segment's [lo, hi] (counted), scaled to
// u = (v − lo)·L/(hi − lo) and stochastically rounded to ⌊u⌋ + Bernoulli(u − ⌊u⌋), at
// most L, with the same floating-point operations as numpy. `parts` maps (an object or a
// Map) each segment name to its values (a Float64Array, or any array of numbers) →
// {values: Uint32Array (b ≤ 32) or BigUint64Array (b > 32), clipped: Number}. A missing
// part, a wrong length, NaN or ±Inf throws a RangeError.
export function encode(plan, parts) {
  const get = (name) =>
    parts instanceof Map ? parts.get(name) : Object.hasOwn(parts, name) ? parts[name] : undefined;
  if (plan.distributedDp) return encodeDistributed(plan, get("delta"), uniformSource());
  const big = plan.bits > 32;
  const top = Number(plan.levels); // L as a double: Python's levels / (hi − lo) divides one
  const topWords = [Number(plan.levels & 0xffffffffn), Number(plan.levels >> 32n)];
  const above = BigInt(top) > plan.levels; // L rounded up as a double (b > 53)
  const words = new Uint32Array(plan.length * (big ? 2 : 1));
  const source = uniformSource();
  const random = Float64Array.from({ length: plan.length }, source);
  let clipped = 0;
  let j = 0;
  for (const seg of plan.segments) {
    const value = get(seg.name);
    if (value === undefined) throw new RangeError(`segment ${seg.name}: no values given`);
    if (!(ArrayBuffer.isView(value) || Array.isArray(value)) || value.length !== seg.length) {
      throw new RangeError(`segment ${seg.name}: ${value?.length} values, expected ${seg.length}`);
    }
    for (let i = 0; i < seg.length; i++) {
      if (!Number.isFinite(value[i])) throw new RangeError(`segment ${seg.name} holds NaN or Inf`);
    }
    const { lo, hi } = seg;
    const scale = top / (hi - lo);
    for (let i = 0; i < seg.length; i++, j++) {
      let v = value[i];
      if (v < lo || v > hi) {
        clipped++;
        v = v < lo ? lo : hi;
      }
      const u = (v - lo) * scale;
      const low = Math.floor(u);
      let r = low + (random[j] < u - low ? 1 : 0);
      if (r > top) r = top;
      if (!big) words[j] = r;
      else if (r === top && above) {
        words[2 * j] = topWords[0];
        words[2 * j + 1] = topWords[1];
      } else {
        const high = Math.floor(r / 4294967296);
        words[2 * j] = r - high * 4294967296;
        words[2 * j + 1] = high;
      }
    }
  }
  return { values: big ? new BigUint64Array(words.buffer) : words, clipped };
}

// --- the client --------------------------------------------------------------------------

const CREATE = Symbol("SecAggClient.create");

// One device's side of one secure round (protocol.py SecAggClient): call the stages in
// order, once each, with the JSON the server sends; each returns the JSON (or, for masked,
// the bytes) to post.
export class SecAggClient {
  constructor(token, me, plan, channel, mask) {
    if (token !== CREATE) throw new TypeError("use `await SecAggClient.create(me, plan)`");
    this.me = me;
    this.plan = plan;
    this._channel = channel;
    this._mask = mask;
    this._selfSeed = randomSecret();
    this._stage = 0;
    this._failed = null;
    this._neighbours = new Map(); // other → {channel, mask, x}
    this._channelKeys = new Map(); // other → AES key
    this._shares = new Map(); // sender → [share of b, share of mask key]
    this._view = null;
  }

  // `me`: this device's id; `plan`: parsePlan's result.
  static async create(me, plan) {
    if (!isId(me)) {
      throw new SecAggUnsupported(`a device id must be 1 to ${MAX_ID_LENGTH} characters`);
    }
    if (!(plan?.context instanceof Uint8Array) || typeof plan.levels !== "bigint") {
      throw new TypeError("SecAggClient.create needs the plan as parsePlan returns it");
    }
    if (!LITTLE_ENDIAN) {
      throw new SecAggUnsupported("secure aggregation needs a little-endian device");
    }
    if (!subtle) {
      throw new SecAggUnsupported(NO_WEBCRYPTO);
    }
    let channel, mask;
    do {
      [channel, mask] = await Promise.all([KeyPair.create(), KeyPair.create()]);
    } while (equalBytes(channel.public, mask.public));
    return new SecAggClient(CREATE, me, plan, channel, mask);
  }

  // Runs one stage's body; a refusal or abort ends this client's part in the round.
  async _run(stage, body) {
    if (this._failed) {
      throw new SecAggRefused(
        `client ${this.me}: refused or aborted at an earlier stage (${this._failed}); ` +
          "it takes no further part in the round",
      );
    }
    const expected = STAGES[this._stage] ?? "none (finished)";
    if (stage !== expected) {
      throw new SecAggRefused(
        `client ${this.me}: asked for stage '${stage}', expected '${expected}'`,
      );
    }
    this._stage++;
    try {
      return await body();
    } catch (err) {
      this._failed = err.message;
      throw err;
    }
  }

  _ad(stage, sender, receiver) {
    return associatedData(this.plan.context, stage, sender, receiver);
  }

  // The two X25519 public keys: {channel: b64, mask: b64}.
  async advertise() {
    return this._run("advertise", async () => ({
      channel: toB64(this._channel.public),
      mask: toB64(this._mask.public),
    }));
  }

  // The server's {other: {channel, mask, x}} → {other: b64 sealed shares of b_i and of the
  // mask private key}. x is a JSON number (a safe integer: the server numbers clients from
  // 1) or a BigInt, positive and below p.
  async share(neighboursJson) {
    return this._run("share", async () => {
      const { me, plan } = this;
      const t = plan.threshold;
      const neighbours = new Map();
      for (const other of ids(neighboursJson, "neighbours", plan.degree)) {
        const entry = neighboursJson[other];
        let x = isObject(entry) ? entry.x : undefined;
        if (typeof x === "number" && Number.isSafeInteger(x)) x = BigInt(x);
        if (typeof x !== "bigint" || !(x > 0n && x < FIELD_PRIME)) {
          throw new SecAggRefused(`neighbour ${other}: x must be a positive integer`);
        }
        const channel = fromB64(entry.channel, "channel key", 32);
        const mask = fromB64(entry.mask, "mask key", 32);
        for (const [name, key] of [["channel", channel], ["mask", mask]]) {
          if (key.length !== 32) throw new SecAggRefused(`the ${name} public key must be 32 bytes`);
        }
        if (equalBytes(channel, mask)) {
          throw new SecAggRefused("the channel and mask public keys must differ");
        }
        neighbours.set(other, { channel, mask, x });
      }
      if (neighbours.has(me)) throw new SecAggRefused(`client ${me}: listed as its own neighbour`);
      if (neighbours.size < t) {
        throw new SecAggRefused(
          `client ${me}: ${neighbours.size} neighbours cannot hold a ${t}-out-of-n share`,
        );
      }
      const xs = [...neighbours.values()].map((n) => n.x);
      if (new Set(xs).size !== xs.length) {
        throw new SecAggRefused(
          `client ${me}: neighbour x-coordinates must be distinct and nonzero`,
        );
      }
      this._neighbours = neighbours;
      const bShares = shamirSplit(this._selfSeed, xs, t);
      const keyShares = shamirSplit(this._mask.secret, xs, t);
      const out = {};
      let i = 0;
      for (const [other, nb] of neighbours) {
        const shared = await this._channel.agree(nb.channel);
        const key = await deriveKey(shared, plan.context, CHANNEL);
        this._channelKeys.set(other, key);
        const plain = concat(secretBytes(bShares[i]), secretBytes(keyShares[i]));
        put(out, other, toB64(await seal(key, plain, this._ad("share", me, other))));
        i++;
      }
      return out;
    });
  }

  // The sealed shares forwarded to this client ({sender: b64}) and encode()'s values → the
  // masked vector y = x + PRG(b_i) + Σ ±PRG(s_ij) mod 2^b as little-endian bytes.
  async masked(sharesJson, values) {
    return this._run("masked", async () => {
      const { me, plan } = this;
      const senders = ids(sharesJson, "shares", plan.degree);
      const sealed = senders.map((s) => [s, fromB64(sharesJson[s], `shares for ${s}`)]);
      for (const [sender, ciphertext] of sealed) {
        if (!this._neighbours.has(sender)) {
          throw new SecAggRefused(`client ${me}: a share from ${sender}, not a neighbour`);
        }
        const plain = await openSealed(
          this._channelKeys.get(sender),
          ciphertext,
          this._ad("share", sender, me),
          `client ${me}: share from ${sender}`,
        );
        if (plain.length !== 2 * SECRET_BYTES) {
          throw new SecAggRefused(`client ${me}: malformed share from ${sender}`);
        }
        const b = fromLE(plain.subarray(0, SECRET_BYTES));
        const k = fromLE(plain.subarray(SECRET_BYTES));
        if (b >= FIELD_PRIME || k >= FIELD_PRIME) {
          throw new SecAggRefused(`client ${me}: share from ${sender} outside the field`);
        }
        this._shares.set(sender, [b, k]);
      }
      if (this._shares.size < plan.threshold) {
        throw new SecAggAborted(
          `client ${me}: only ${this._shares.size} neighbours shared keys, ` +
            `${plan.threshold} are needed to rebuild this client's masks`,
        );
      }
      const big = plan.bits > 32;
      const type = big ? BigUint64Array : Uint32Array;
      if (!(values instanceof type) || values.length !== plan.length) {
        throw new RangeError(`values must be ${plan.length} ${type.name} integers`);
      }
      const y = new Uint32Array(plan.length * (big ? 2 : 1));
      y.set(new Uint32Array(values.buffer, values.byteOffset, y.length));
      const selfSeed = await deriveKey(secretBytes(this._selfSeed), plan.context, SELF_MASK);
      addWords(y, await maskWords(selfSeed, plan.length, plan.bits), plan.bits, 1);
      for (const other of this._shares.keys()) {
        const shared = await this._mask.agree(this._neighbours.get(other).mask);
        const seed = await deriveKey(shared, plan.context, PAIR_MASK);
        const sign = before(me, other) ? 1 : -1; // protocol.py _sign_positive
        addWords(y, await maskWords(seed, plan.length, plan.bits), plan.bits, sign);
      }
      return new Uint8Array(reduceWords(y, plan.bits).buffer);
    });
  }

  // The server's view {survivors: [...], dropped: [...]} → {other: b64 sealed digest of it}
  // for every surviving neighbour that shared with this client.
  async confirm(viewJson) {
    return this._run("confirm", async () => {
      const { me, plan } = this;
      const lists = [];
      for (const name of ["survivors", "dropped"]) {
        const value = isObject(viewJson) ? viewJson[name] : undefined;
        if (!Array.isArray(value) || value.length > plan.maxClients) {
          throw new SecAggRefused(
            `${name} must be a list of at most ${plan.maxClients} device ids`,
          );
        }
        if (!value.every(isId)) {
          throw new SecAggRefused(
            `${name}: device ids are strings of 1 to ${MAX_ID_LENGTH} characters`,
          );
        }
        lists.push(value);
      }
      const [survivorList, droppedList] = lists;
      const survivors = new Set(survivorList);
      const dropped = new Set(droppedList);
      if (survivors.size !== survivorList.length || dropped.size !== droppedList.length) {
        throw new SecAggRefused(`client ${me}: the survivor or dropout list repeats a client`);
      }
      const overlap = survivorList.filter((s) => dropped.has(s)).sort(byCodePoint);
      if (overlap.length) {
        throw new SecAggRefused(
          `client ${me}: ${JSON.stringify(overlap)} listed both as survivors and as dropped`,
        );
      }
      if (!survivors.has(me)) {
        throw new SecAggRefused(`client ${me}: not listed among the survivors`);
      }
      if (survivors.size < plan.minSurvivors) {
        throw new SecAggRefused(
          `client ${me}: ${survivors.size} survivors, fewer than the ${plan.minSurvivors} ` +
            "whose noise the sum needs; refusing to unmask",
        );
      }
      for (const other of this._neighbours.keys()) {
        const listed = (survivors.has(other) ? 1 : 0) + (dropped.has(other) ? 1 : 0);
        if (this._shares.has(other) && listed !== 1) {
          throw new SecAggRefused(`client ${me}: neighbour ${other} must be a survivor or dropped`);
        }
        if (!this._shares.has(other) && listed) {
          throw new SecAggRefused(`client ${me}: neighbour ${other} never shared keys`);
        }
      }
      const own = await digest(
        plan.context,
        "view",
        ...[...survivorList].sort(byCodePoint),
        "|",
        ...[...droppedList].sort(byCodePoint),
      );
      this._view = { survivors, dropped, digest: own };
      const out = {};
      for (const other of this._shares.keys()) {
        if (!survivors.has(other)) continue;
        const key = this._channelKeys.get(other);
        put(out, other, toB64(await seal(key, own, this._ad("confirm", me, other))));
      }
      return out;
    });
  }

  // The neighbours' sealed confirmations ({sender: b64}) → after t − 1 of them match this
  // client's view: {self_mask: {o: hex}, mask_key: {o: hex}}, the shares of b_o for the
  // surviving neighbours and of the mask key for the dropped ones (lowercase hex, as
  // Python's format(s, "x")).
  async unmask(confirmationsJson) {
    return this._run("unmask", async () => {
      const { me, plan } = this;
      const view = this._view;
      const senders = ids(confirmationsJson, "confirmations", plan.degree);
      const sealed = senders.map((s) => [
        s,
        fromB64(confirmationsJson[s], `confirmations for ${s}`),
      ]);
      let agreeing = 0;
      for (const [sender, ciphertext] of sealed) {
        if (!this._shares.has(sender) || !view.survivors.has(sender)) {
          throw new SecAggRefused(
            `client ${me}: a confirmation from ${sender}, not a surviving neighbour`,
          );
        }
        const plain = await openSealed(
          this._channelKeys.get(sender),
          ciphertext,
          this._ad("confirm", sender, me),
          `client ${me}: confirmation from ${sender}`,
        );
        if (!equalBytes(plain, view.digest)) {
          throw new SecAggRefused(
            `client ${me}: neighbour ${sender} was shown a different list of survivors and ` +
              "dropouts; refusing to unmask",
          );
        }
        agreeing++;
      }
      if (agreeing + 1 < plan.threshold) {
        throw new SecAggRefused(
          `client ${me}: only ${agreeing} neighbours confirmed the survivor list, ` +
            `${plan.threshold - 1} needed`,
        );
      }
      const selfMask = {};
      const maskKey = {};
      for (const [owner, [b, k]] of this._shares) {
        if (view.survivors.has(owner)) put(selfMask, owner, b.toString(16));
        if (view.dropped.has(owner)) put(maskKey, owner, k.toString(16));
      }
      return { self_mask: selfMask, mask_key: maskKey };
    });
  }
}
