// fedge's model spec (fedge/models/spec.py) built as a TensorFlow.js model, and the
// exact conversion of weights between PyTorch's layouts and TensorFlow.js's.
//
// The spec is channel-first: images are (C, H, W), a conv2d weight is (F, C, K, K), a
// dense weight is (U, D_in) with y = x·Wᵀ + b, and flatten takes the row-major order of
// (C, H, W). TensorFlow.js computes channel-last: activations are (H, W, C), a conv
// kernel is (K, K, C, F), a dense kernel is (D_in, U). So:
//   conv2d   (F, C, K, K)  → transpose [2, 3, 1, 0] → (K, K, C, F)
//   dense    (U, D)        → transpose             → (D, U)
//   the first dense after a flatten of an image also has its rows reordered: row i of
//   the TensorFlow.js kernel multiplies the i-th value of an (H, W, C) flatten, which is
//   the value PyTorch has at position c·H·W + h·W + w. (A plain transpose would have the
//   right shape and the wrong function.)
// Every conversion is a permutation of the same numbers, so anything computed
// element-wise on weights (SGD, proximal terms, control variates) can be computed in
// either layout and converted at the end.

export const LAYER_TYPES = ["conv2d", "maxpool2d", "flatten", "dense", "relu", "tanh", "sigmoid"];

const FIELDS = {
  conv2d: ["filters", "kernel_size", "stride", "padding"],
  maxpool2d: ["pool_size", "stride"],
  flatten: [],
  dense: ["units", "bias"],
  relu: [],
  tanh: [],
  sigmoid: [],
};

export class SpecError extends Error {
  constructor(message) {
    super(message);
    this.name = "SpecError";
  }
}

const positive = (v) => Number.isInteger(v) && v > 0;
const prod = (shape) => shape.reduce((a, b) => a * b, 1);

// Validate `spec` as fedge.models.spec does and return its layers with their names and
// (channel-first) input and output shapes; throws SpecError naming what it cannot build.
export function checkSpec(spec) {
  if (spec === null || typeof spec !== "object")
    throw new SpecError("the model spec is not an object");
  for (const key of Object.keys(spec)) {
    if (!["name", "input_shape", "layers"].includes(key))
      throw new SpecError(`unknown spec field ${key}`);
  }
  const inputShape = spec.input_shape;
  if (!Array.isArray(inputShape) || !inputShape.length || !inputShape.every(positive)) {
    throw new SpecError(`input_shape must be positive integers, got ${JSON.stringify(inputShape)}`);
  }
  if (!Array.isArray(spec.layers) || !spec.layers.length)
    throw new SpecError("the spec has no layers");
  let shape = [...inputShape];
  const names = new Set();
  const layers = spec.layers.map((raw, i) => {
    const type = raw?.type;
    const where = `layer ${i} (${type})`;
    if (!LAYER_TYPES.includes(type)) {
      throw new SpecError(
        `this browser client cannot build layer ${i} of type ${JSON.stringify(type)}; ` +
          `it builds ${LAYER_TYPES.join(", ")}`,
      );
    }
    for (const key of Object.keys(raw)) {
      if (key !== "type" && key !== "name" && !FIELDS[type].includes(key)) {
        throw new SpecError(`${where}: unknown field ${key}`);
      }
    }
    const name = raw.name ?? `${type}${i}`;
    if (typeof name !== "string" || names.has(name))
      throw new SpecError(`${where}: bad or repeated name ${name}`);
    names.add(name);
    const layer = { type, name, inShape: shape };
    if (type === "conv2d" || type === "maxpool2d") {
      if (shape.length !== 3) throw new SpecError(`${where} needs (C, H, W) input, got [${shape}]`);
      const [c, h, w] = shape;
      if (type === "conv2d") {
        const { filters, kernel_size: k, stride = 1, padding = "valid" } = raw;
        if (!positive(filters) || !positive(k) || !positive(stride))
          throw new SpecError(`${where}: bad sizes`);
        if (padding === "same") {
          if (k % 2 === 0 || stride !== 1)
            throw new SpecError(`${where}: 'same' padding needs an odd kernel, stride 1`);
          shape = [filters, h, w];
        } else if (padding === "valid") {
          if (k > h || k > w)
            throw new SpecError(`${where}: kernel ${k} larger than input ${h}x${w}`);
          shape = [filters, Math.floor((h - k) / stride) + 1, Math.floor((w - k) / stride) + 1];
        } else {
          throw new SpecError(`${where}: padding must be "valid" or "same"`);
        }
        Object.assign(layer, { filters, kernel: k, stride, padding, channels: c });
      } else {
        const p = raw.pool_size;
        const s = raw.stride ?? p;
        if (!positive(p) || !positive(s)) throw new SpecError(`${where}: bad sizes`);
        if (p > h || p > w) throw new SpecError(`${where}: pool ${p} larger than input ${h}x${w}`);
        shape = [c, Math.floor((h - p) / s) + 1, Math.floor((w - p) / s) + 1];
        Object.assign(layer, { pool: p, stride: s });
      }
    } else if (type === "flatten") {
      shape = [prod(shape)];
    } else if (type === "dense") {
      if (shape.length !== 1)
        throw new SpecError(`${where} needs flat input, got [${shape}]: add a flatten layer`);
      const { units, bias = true } = raw;
      if (!positive(units) || typeof bias !== "boolean")
        throw new SpecError(`${where}: bad units or bias`);
      Object.assign(layer, { units, bias, inputs: shape[0] });
      shape = [units];
    }
    layer.outShape = shape;
    return layer;
  });
  if (shape.length !== 1)
    throw new SpecError(`the model must end with flat logits, got [${shape}]`);
  return { inputShape, layers, numClasses: shape[0] };
}

// For a (C, H, W) image flattened channel-last, the channel-first position of each value:
// perm[(h·W + w)·C + c] = (c·H + h)·W + w.
export function flattenOrder([c, h, w]) {
  const perm = new Int32Array(c * h * w);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      for (let k = 0; k < c; k++) perm[(y * w + x) * c + k] = (k * h + y) * w + x;
    }
  }
  return perm;
}

function inverse(perm) {
  const inv = new Int32Array(perm.length);
  perm.forEach((p, i) => (inv[p] = i));
  return inv;
}

// One parameter: its name, PyTorch shape and the conversions both ways (tf.Tensor → tf.Tensor).
function parameter(name, shape, toTf = (t) => t, toTorch = (t) => t) {
  return { name, shape, toTf, toTorch };
}

export class SpecModel {
  // `tf` is the TensorFlow.js module; `spec` a model spec (throws SpecError).
  constructor(tf, spec) {
    this.tf = tf;
    const { inputShape, layers, numClasses } = checkSpec(spec);
    this.inputShape = inputShape;
    this.layers = layers;
    this.numClasses = numClasses;
    this.parameters = [];
    // Images are fed channel-last; a flatten of an image leaves a channel-last order that
    // the next dense layer's rows must follow.
    let order = null;
    for (const layer of layers) {
      if (layer.type === "flatten" && layer.inShape.length === 3) {
        order = flattenOrder(layer.inShape);
      } else if (layer.type === "conv2d") {
        const { filters, channels, kernel } = layer;
        this.parameters.push(
          parameter(
            `${layer.name}.weight`,
            [filters, channels, kernel, kernel],
            (t) => tf.transpose(t, [2, 3, 1, 0]),
            (t) => tf.transpose(t, [3, 2, 0, 1]),
          ),
          parameter(`${layer.name}.bias`, [filters]),
        );
      } else if (layer.type === "dense") {
        const rows = order;
        const back = rows && inverse(rows);
        this.parameters.push(
          parameter(
            `${layer.name}.weight`,
            [layer.units, layer.inputs],
            rows ? (t) => tf.gather(tf.transpose(t), rows) : (t) => tf.transpose(t),
            rows ? (t) => tf.transpose(tf.gather(t, back)) : (t) => tf.transpose(t),
          ),
        );
        if (layer.bias) this.parameters.push(parameter(`${layer.name}.bias`, [layer.units]));
        order = null;
      }
    }
    this.names = this.parameters.map((p) => p.name);
  }

  // Tensors by name in PyTorch layout ({dtype, shape, data}, as safetensors.parse gives
  // them) → tf.Tensors in this model's order and layout. Names, shapes and dtypes must be
  // exactly the model's.
  fromTorch(tensors, what = "model") {
    const tf = this.tf;
    const got = Object.keys(tensors).sort();
    const want = [...this.names].sort();
    if (got.join("\n") !== want.join("\n")) {
      throw new SpecError(
        `the ${what} has tensors ${got.join(", ")}; the spec needs ${want.join(", ")}`,
      );
    }
    return this.parameters.map(({ name, shape, toTf }) => {
      const t = tensors[name];
      if (t.dtype !== "F32" || t.shape.join(",") !== shape.join(",")) {
        throw new SpecError(
          `${what} tensor ${name} is ${t.dtype} [${t.shape}], the spec needs F32 [${shape}]`,
        );
      }
      return tf.tidy(() => toTf(tf.tensor(t.data, shape, "float32")));
    });
  }

  // tf.Tensors in this model's order and layout → {name: {dtype: "F32", shape, data}}.
  toTorch(weights) {
    const out = {};
    this.parameters.forEach(({ name, shape, toTorch }, i) => {
      const t = this.tf.tidy(() => toTorch(weights[i]));
      out[name] = { dtype: "F32", shape, data: t.dataSync().slice() };
      t.dispose();
    });
    return out;
  }

  // n examples in PyTorch's layout (a Float32Array of n·prod(input_shape) values) → the
  // model's input tensor (channel-last for images).
  inputs(x, n) {
    const tf = this.tf;
    return tf.tidy(() => {
      const t = tf.tensor(x, [n, ...this.inputShape], "float32");
      return this.inputShape.length === 3 ? tf.transpose(t, [0, 2, 3, 1]) : t;
    });
  }

  // Logits of input `x` (from `inputs`) under `weights` (from `fromTorch`).
  forward(weights, x) {
    const tf = this.tf;
    let h = x;
    let i = 0;
    for (const layer of this.layers) {
      switch (layer.type) {
        case "conv2d":
          h = tf.add(tf.conv2d(h, weights[i], layer.stride, layer.padding), weights[i + 1]);
          i += 2;
          break;
        case "maxpool2d":
          h = tf.maxPool(h, layer.pool, layer.stride, "valid");
          break;
        case "flatten":
          h = tf.reshape(h, [h.shape[0], -1]);
          break;
        case "dense":
          h = tf.matMul(h, weights[i++]);
          if (layer.bias) h = tf.add(h, weights[i++]);
          break;
        default:
          h = tf[layer.type](h);
      }
    }
    return h;
  }
}

// Mean softmax cross-entropy of logits against integer labels (an int32 tensor).
export function crossEntropy(tf, logits, labels) {
  const logp = tf.logSoftmax(logits);
  return tf.neg(tf.mean(tf.sum(tf.mul(tf.oneHot(labels, logits.shape[1]), logp), 1)));
}
