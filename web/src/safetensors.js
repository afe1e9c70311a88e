// The safetensors file format, read and written in the browser.
//
// A file is an 8-byte little-endian header length N, N bytes of JSON, then the raw
// little-endian tensor data. The JSON maps each tensor name to {dtype, shape,
// data_offsets: [begin, end]} (offsets into the data part) and may hold "__metadata__", an
// object of string values. fedge names tensors "params/<name>" and
// "extras/<group>/<name>" (fedge/federation/wire.py).
//
// The writer lays a file out as the reference (Rust) implementation does: tensors ordered
// by dtype (widest first) then name, the header padded with spaces to a multiple of 8
// bytes. Only the order of the metadata keys can differ (the reference takes it from a
// hash map).

const DTYPES = {
  F64: Float64Array,
  F32: Float32Array,
  I64: BigInt64Array,
  U64: BigUint64Array,
  I32: Int32Array,
  U32: Uint32Array,
  I16: Int16Array,
  U16: Uint16Array,
  I8: Int8Array,
  U8: Uint8Array,
  BOOL: Uint8Array,
};
// The reference writer's data order: dtypes in this order, then names.
const ORDER = ["U64", "I64", "F64", "F32", "U32", "I32", "U16", "I16", "I8", "U8", "BOOL"];
const MAX_HEADER = 16 << 20;

export class SafetensorsError extends Error {
  constructor(message) {
    super(message);
    this.name = "SafetensorsError";
  }
}

const numel = (shape) => shape.reduce((a, b) => a * b, 1);

// A Uint8Array or ArrayBuffer → {metadata, tensors: {name: {dtype, shape, data}}}, each
// `data` a typed array of its own (copied, so aligned).
export function parse(input) {
  const bytes = input instanceof Uint8Array ? input : new Uint8Array(input);
  if (bytes.length < 8) throw new SafetensorsError(`not a safetensors file: ${bytes.length} bytes`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const size = view.getBigUint64(0, true);
  if (size > BigInt(Math.min(bytes.length - 8, MAX_HEADER))) {
    throw new SafetensorsError(`header of ${size} bytes does not fit the file`);
  }
  const n = Number(size);
  let header;
  try {
    header = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes.subarray(8, 8 + n)));
  } catch (err) {
    throw new SafetensorsError(`header is not JSON: ${err.message}`);
  }
  if (header === null || typeof header !== "object" || Array.isArray(header)) {
    throw new SafetensorsError("header is not a JSON object");
  }
  const data = bytes.subarray(8 + n);
  const tensors = {};
  let metadata = {};
  for (const [name, info] of Object.entries(header)) {
    if (name === "__metadata__") {
      metadata = info ?? {};
      continue;
    }
    const Type = DTYPES[info?.dtype];
    if (!Type) throw new SafetensorsError(`tensor ${name}: unsupported dtype ${info?.dtype}`);
    const { shape, data_offsets: offsets } = info;
    if (!Array.isArray(shape) || !shape.every((d) => Number.isInteger(d) && d >= 0)) {
      throw new SafetensorsError(`tensor ${name}: bad shape ${JSON.stringify(shape)}`);
    }
    const [begin, end] = offsets ?? [];
    if (!(
      Number.isInteger(begin) &&
      Number.isInteger(end) &&
      0 <= begin &&
      begin <= end &&
      end <= data.length
    )) {
      throw new SafetensorsError(
        `tensor ${name}: data offsets ${JSON.stringify(offsets)} out of range`,
      );
    }
    if (end - begin !== numel(shape) * Type.BYTES_PER_ELEMENT) {
      throw new SafetensorsError(`tensor ${name}: ${end - begin} bytes for shape [${shape}]`);
    }
    tensors[name] = { dtype: info.dtype, shape, data: new Type(data.slice(begin, end).buffer) };
  }
  return { metadata, tensors };
}

// {name: {dtype, shape, data}} and a metadata object of strings → Uint8Array.
export function serialize(tensors, metadata = null) {
  const names = Object.keys(tensors).sort((a, b) => {
    const byType = ORDER.indexOf(tensors[a].dtype) - ORDER.indexOf(tensors[b].dtype);
    return byType || (a < b ? -1 : a > b ? 1 : 0);
  });
  const header = {};
  if (metadata && Object.keys(metadata).length) {
    for (const [key, value] of Object.entries(metadata)) {
      if (typeof value !== "string") throw new SafetensorsError(`metadata ${key} must be a string`);
    }
    header.__metadata__ = metadata;
  }
  let offset = 0;
  for (const name of names) {
    const { dtype, shape, data } = tensors[name];
    const Type = DTYPES[dtype];
    if (!Type) throw new SafetensorsError(`tensor ${name}: unsupported dtype ${dtype}`);
    if (!(data instanceof Type) || data.length !== numel(shape)) {
      throw new SafetensorsError(`tensor ${name}: data does not match ${dtype} [${shape}]`);
    }
    header[name] = { dtype, shape, data_offsets: [offset, offset + data.byteLength] };
    offset += data.byteLength;
  }
  const json = new TextEncoder().encode(JSON.stringify(header));
  const padded = Math.ceil(json.length / 8) * 8;
  const out = new Uint8Array(8 + padded + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(padded), true);
  out.set(json, 8);
  out.fill(0x20, 8 + json.length, 8 + padded);
  let at = 8 + padded;
  for (const name of names) {
    const { data } = tensors[name];
    out.set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength), at);
    at += data.byteLength;
  }
  return out;
}

// fedge's naming: {"params/w": t, "extras/c/w": t} ↔ {params: {w: t}, extras: {c: {w: t}}}.
export function unpack(tensors) {
  const params = {};
  const extras = {};
  for (const [name, tensor] of Object.entries(tensors)) {
    const parts = name.split("/");
    if (parts[0] === "params" && parts.length >= 2 && parts[1]) {
      params[parts.slice(1).join("/")] = tensor;
    } else if (parts[0] === "extras" && parts.length >= 3 && parts[1] && parts[2]) {
      (extras[parts[1]] ??= {})[parts.slice(2).join("/")] = tensor;
    } else {
      throw new SafetensorsError(
        `tensor ${name} is neither params/<name> nor extras/<group>/<name>`,
      );
    }
  }
  return { params, extras };
}

export function pack(params, extras = {}) {
  const tensors = {};
  for (const [name, t] of Object.entries(params)) tensors[`params/${name}`] = t;
  for (const [group, values] of Object.entries(extras)) {
    for (const [name, t] of Object.entries(values)) tensors[`extras/${group}/${name}`] = t;
  }
  return tensors;
}

export const MODEL_FORMAT = "fedge.model.v1";
export const UPDATE_FORMAT = "fedge.update.v1";

// A model file (fedge.model.v1) → {modelVersion, params, extras}.
export function decodeModel(bytes) {
  const { metadata, tensors } = parse(bytes);
  if (metadata.format !== MODEL_FORMAT) {
    throw new SafetensorsError(
      `not a fedge model file (format ${JSON.stringify(metadata.format)})`,
    );
  }
  const modelVersion = Number(metadata.model_version);
  if (!Number.isInteger(modelVersion) || modelVersion < 0) {
    throw new SafetensorsError(`bad model_version ${JSON.stringify(metadata.model_version)}`);
  }
  return { modelVersion, ...unpack(tensors) };
}

export function encodeModel(params, extras, modelVersion) {
  return serialize(pack(params, extras), {
    format: MODEL_FORMAT,
    model_version: String(modelVersion),
  });
}

// An update file (fedge.update.v1), as wire.encode_update writes it.
export function encodeUpdate(
  { params, extras, numSamples, numSteps, metrics },
  { round, modelVersion },
) {
  return serialize(pack(params, extras), {
    format: UPDATE_FORMAT,
    round: String(round),
    model_version: String(modelVersion),
    num_samples: String(numSamples),
    num_steps: String(numSteps),
    metrics: JSON.stringify(metrics),
  });
}

export function decodeUpdate(bytes) {
  const { metadata, tensors } = parse(bytes);
  if (metadata.format !== UPDATE_FORMAT) {
    throw new SafetensorsError(
      `not a fedge update file (format ${JSON.stringify(metadata.format)})`,
    );
  }
  const int = (key) => Number.parseInt(metadata[key], 10);
  return {
    round: int("round"),
    modelVersion: int("model_version"),
    numSamples: int("num_samples"),
    numSteps: int("num_steps"),
    metrics: JSON.parse(metadata.metrics ?? "{}"),
    ...unpack(tensors),
  };
}
