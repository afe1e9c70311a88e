// The device's own examples, read from a file the user picks (nothing is uploaded):
//   .npz   NumPy's np.savez / np.savez_compressed with arrays x (n, *input_shape) and y (n,)
//          integer labels: the file `fedge client --data` reads;
//   .json  {"x": [...], "y": [...]}, each x either nested in the input shape or flat.
// Images are channel-first (C, H, W), as everywhere in fedge.

export class DataError extends Error {
  constructor(message) {
    super(message);
    this.name = "DataError";
  }
}

const prod = (shape) => shape.reduce((a, b) => a * b, 1);

// ---- .npy / .npz ----------------------------------------------------------------------

const NPY_TYPES = {
  f4: Float32Array,
  f8: Float64Array,
  i1: Int8Array,
  u1: Uint8Array,
  i2: Int16Array,
  u2: Uint16Array,
  i4: Int32Array,
  u4: Uint32Array,
  i8: BigInt64Array,
  u8: BigUint64Array,
  b1: Uint8Array,
};

// One .npy array → {shape, data}.
export function parseNpy(bytes, name = "array") {
  const magic = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59];
  if (!magic.every((b, i) => bytes[i] === b))
    throw new DataError(`${name}.npy is not a NumPy array`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const major = bytes[6];
  const [size, start] = major === 1 ? [view.getUint16(8, true), 10] : [view.getUint32(8, true), 12];
  const header = new TextDecoder().decode(bytes.subarray(start, start + size));
  const descr = /'descr':\s*'([<>|=])([a-z]\d+)'/.exec(header);
  const order = /'fortran_order':\s*(True|False)/.exec(header);
  const shape = /'shape':\s*\(([^)]*)\)/.exec(header);
  if (!descr || !order || !shape)
    throw new DataError(`${name}.npy has a header this page cannot read`);
  const Type = NPY_TYPES[descr[2]];
  if (!Type || descr[1] === ">")
    throw new DataError(`${name}.npy has dtype ${descr[1]}${descr[2]}, not a little-endian number`);
  if (order[1] === "True")
    throw new DataError(`${name}.npy is in Fortran order: save it C-ordered`);
  const dims = shape[1]
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean)
    .map(Number);
  const offset = start + size;
  const length = prod(dims);
  if (bytes.length - offset < length * Type.BYTES_PER_ELEMENT)
    throw new DataError(`${name}.npy is truncated`);
  const data = new Type(bytes.slice(offset, offset + length * Type.BYTES_PER_ELEMENT).buffer);
  return { shape: dims, data };
}

async function inflate(bytes) {
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate-raw"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

// A zip archive (its central directory, zip64 included) → {name: Uint8Array}.
export async function unzip(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let end = -1;
  for (let i = bytes.length - 22; i >= Math.max(0, bytes.length - 22 - 65535); i--) {
    if (view.getUint32(i, true) === 0x06054b50) {
      end = i;
      break;
    }
  }
  if (end < 0) throw new DataError("not a zip archive (.npz)");
  let count = view.getUint16(end + 10, true);
  let at = view.getUint32(end + 16, true);
  if (at === 0xffffffff || count === 0xffff) {
    const locator = end - 20;
    if (view.getUint32(locator, true) !== 0x07064b50) throw new DataError("broken zip64 archive");
    const end64 = Number(view.getBigUint64(locator + 8, true));
    count = Number(view.getBigUint64(end64 + 32, true));
    at = Number(view.getBigUint64(end64 + 48, true));
  }
  const files = {};
  const decoder = new TextDecoder();
  for (let k = 0; k < count; k++) {
    if (view.getUint32(at, true) !== 0x02014b50) throw new DataError("broken zip directory");
    const method = view.getUint16(at + 10, true);
    let compressed = view.getUint32(at + 20, true);
    let size = view.getUint32(at + 24, true);
    const nameLength = view.getUint16(at + 28, true);
    const extraLength = view.getUint16(at + 30, true);
    const commentLength = view.getUint16(at + 32, true);
    let local = view.getUint32(at + 42, true);
    const name = decoder.decode(bytes.subarray(at + 46, at + 46 + nameLength));
    // zip64: the 32-bit fields that are 0xFFFFFFFF are in the extra field, in this order.
    for (let e = at + 46 + nameLength; e < at + 46 + nameLength + extraLength;) {
      const id = view.getUint16(e, true);
      const length = view.getUint16(e + 2, true);
      if (id === 0x0001) {
        let p = e + 4;
        const next = () => Number(view.getBigUint64((p += 8) - 8, true));
        if (size === 0xffffffff) size = next();
        if (compressed === 0xffffffff) compressed = next();
        if (local === 0xffffffff) local = next();
      }
      e += 4 + length;
    }
    const dataStart =
      local + 30 + view.getUint16(local + 26, true) + view.getUint16(local + 28, true);
    const raw = bytes.subarray(dataStart, dataStart + compressed);
    if (method === 0) files[name] = raw;
    else if (method === 8) files[name] = await inflate(raw);
    else
      throw new DataError(
        `${name} in the .npz uses zip method ${method}; use np.savez or np.savez_compressed`,
      );
    at += 46 + nameLength + extraLength + commentLength;
  }
  return files;
}

// ---- the device's examples --------------------------------------------------------------

function labels(values, n, source) {
  const y = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    const v = Number(values[i]);
    if (!Number.isInteger(v) || v < 0 || v > 2 ** 31 - 1)
      throw new DataError(`${source}: label ${i} is ${values[i]}, not a class index`);
    y[i] = v;
  }
  return y;
}

function fromNpz(files, source) {
  const arrays = {};
  for (const [name, bytes] of Object.entries(files)) arrays[name.replace(/\.npy$/, "")] = bytes;
  if (!arrays.x || !arrays.y)
    throw new DataError(`${source} needs arrays x and y (has ${Object.keys(arrays).join(", ")})`);
  const x = parseNpy(arrays.x, "x");
  const y = parseNpy(arrays.y, "y");
  if (x.data instanceof BigInt64Array || x.data instanceof BigUint64Array)
    throw new DataError(`${source}: x must be numbers, not 64-bit integers`);
  if (y.data instanceof Float32Array || y.data instanceof Float64Array)
    throw new DataError(`${source}: y must be integer labels`);
  const n = x.shape[0];
  if (!x.shape.length || y.shape.length !== 1 || y.shape[0] !== n) {
    throw new DataError(
      `${source}: x has shape [${x.shape}] and y [${y.shape}]; they need the same number of rows`,
    );
  }
  return { x: Float32Array.from(x.data), y: labels(y.data, n, source), n, shape: x.shape.slice(1) };
}

function fromJson(data, source) {
  if (!Array.isArray(data?.x) || !Array.isArray(data?.y))
    throw new DataError(`${source} needs {"x": [...], "y": [...]}`);
  const n = data.x.length;
  if (data.y.length !== n)
    throw new DataError(`${source}: ${n} inputs but ${data.y.length} labels`);
  const rows = data.x.map((row) => (Array.isArray(row) ? row.flat(Infinity) : [row]));
  const width = rows[0]?.length ?? 0;
  const x = new Float32Array(n * width);
  rows.forEach((row, i) => {
    if (row.length !== width)
      throw new DataError(
        `${source}: example ${i} has ${row.length} values, example 0 has ${width}`,
      );
    row.forEach((v, j) => {
      if (typeof v !== "number" || !Number.isFinite(v))
        throw new DataError(`${source}: example ${i} holds ${v}`);
      x[i * width + j] = v;
    });
  });
  const shape = [];
  for (let row = data.x[0]; Array.isArray(row); row = row[0]) shape.push(row.length);
  return { x, y: labels(data.y, n, source), n, shape: shape.length ? shape : [width] };
}

// Bytes of a file named `source` → {x: Float32Array, y: Int32Array, n, shape}.
export async function readExamples(bytes, source) {
  let examples;
  if (bytes[0] === 0x50 && bytes[1] === 0x4b) {
    examples = fromNpz(await unzip(bytes), source);
  } else {
    let data;
    try {
      data = JSON.parse(new TextDecoder().decode(bytes));
    } catch (err) {
      throw new DataError(`${source} is neither an .npz nor JSON (${err.message})`);
    }
    examples = fromJson(data, source);
  }
  if (examples.n === 0) throw new DataError(`${source} holds no examples`);
  return { ...examples, source };
}

// Check examples against the model: same input size (and shape, when the file says it)
// and labels below the number of classes.
export function checkExamples(examples, inputShape, numClasses) {
  const width = examples.x.length / examples.n;
  if (width !== prod(inputShape)) {
    throw new DataError(
      `the examples have ${width} values each; the model takes [${inputShape}] = ${prod(inputShape)}`,
    );
  }
  const { shape } = examples;
  if (shape && shape.length > 1 && shape.join(",") !== inputShape.join(",")) {
    throw new DataError(
      `the examples have shape [${shape}]; the model takes [${inputShape}] (channel-first)`,
    );
  }
  const top = examples.y.reduce((a, b) => Math.max(a, b), 0);
  if (top >= numClasses) {
    const i = examples.y.indexOf(top);
    const which = examples.names ? ` (of ${examples.names[i]})` : ` (example ${i})`;
    const classes = `the model has ${numClasses} classes, labels 0 to ${numClasses - 1}`;
    throw new DataError(`unknown label ${top}${which}: ${classes}`);
  }
}
