// TensorFlow.js backends for the browser client: WebAssembly (XNNPACK, SIMD), WebGL and
// plain JavaScript ("cpu"). benchmarks/browser.py measures them; in headless Chromium the
// LeNet CNN trains ~20× faster on wasm than on cpu or (software) WebGL, so "auto" tries
// wasm first, then WebGL where it computes in float32, then cpu.
//
// The wasm backend (@tensorflow/tfjs-backend-wasm, from web/node_modules, served by the
// server at /client like TensorFlow.js itself) comes as a UMD bundle: it is loaded as a
// classic script through its AMD branch, handed this page's TensorFlow.js as its core, so
// that there is one engine. Two of its training kernels are replaced here:
//   - Conv2DBackpropFilter (the gradient of a conv kernel) does not exist in 4.22: it is
//     computed with the backend's own Conv2D (filterGradient);
//   - its MaxPoolGrad drops the gradient of a window whose values are all negative (it
//     starts the max at 0): it is computed in JavaScript (poolGradient), as the cpu
//     backend and PyTorch do (the first maximum of each window gets the gradient).
// The browser tests check training on wasm against PyTorch, so a wrong kernel fails them.

export const BACKENDS = ["wasm", "webgl", "cpu"];

const WASM_SCRIPT = "/client/tf-backend-wasm.es2017.min.js";
const WASM_DIR = "/client/";

let wasmLoading = null;

function loadScript(src, tf) {
  return new Promise((resolve, reject) => {
    const previous = Object.getOwnPropertyDescriptor(globalThis, "define");
    let exported = null;
    // The bundle calls define(["exports", "@tensorflow/tfjs-core", "fs", "path",
    // "perf_hooks", "os"], factory); the Node.js modules are only used under Node.js.
    const define = (deps, factory) => {
      exported = {};
      factory(exported, tf, {}, {}, {}, {});
    };
    define.amd = true;
    globalThis.define = define;
    const restore = () => {
      if (previous) Object.defineProperty(globalThis, "define", previous);
      else delete globalThis.define;
    };
    const script = document.createElement("script");
    script.src = src;
    script.onload = () => {
      restore();
      script.remove();
      if (exported?.setWasmPaths) resolve(exported);
      else reject(new Error(`${src} did not define the wasm backend`));
    };
    script.onerror = () => {
      restore();
      script.remove();
      reject(new Error(`cannot load ${src} (is @tensorflow/tfjs-backend-wasm installed?)`));
    };
    document.head.append(script);
  });
}

// ∂L/∂W of a conv2d, from x (N, H, W, Ci) and dy (N, Ho, Wo, Co), as one convolution:
//   dW[a, b, ci, co] = Σ_{n, i, j} x_padded[n, i·s + a, j·s + b, ci] · dy[n, i, j, co]
// is a conv2d of xᵀ (Ci, H, W, N) — the channels as the batch, the batch as the channels —
// with the filter dyᵀ (Ho, Wo, N, Co), stride 1, dilation s and the forward padding; its
// output (Ci, ≥kh, ≥kw, Co) is cut to the kernel size and transposed to (kh, kw, Ci, Co).
function filterGradient(tf) {
  return ({ inputs, attrs, backend }) => {
    const { x, dy } = inputs;
    const { strides, pad, dataFormat, dimRoundingMode, filterShape } = attrs;
    if (dataFormat && dataFormat !== "NHWC")
      throw new Error(`Conv2DBackpropFilter on wasm: data format ${dataFormat} is not supported`);
    const info = tf.backend_util.computeConv2DInfo(
      x.shape,
      filterShape,
      strides,
      1,
      pad,
      dimRoundingMode,
      false,
      "channelsLast",
    );
    const run = (name, ins, as) =>
      tf.getKernel(name, "wasm").kernelFunc({ inputs: ins, attrs: as, backend });
    const [kh, kw, ci, co] = filterShape;
    const { top, bottom, left, right } = info.padInfo;
    const temps = [];
    const xT = run("Transpose", { x }, { perm: [3, 1, 2, 0] });
    const dyT = run("Transpose", { x: dy }, { perm: [1, 2, 0, 3] });
    temps.push(xT, dyT);
    let out = run(
      "Conv2D",
      { x: xT, filter: dyT },
      {
        strides: [1, 1],
        pad: [
          [0, 0],
          [top, bottom],
          [left, right],
          [0, 0],
        ],
        dataFormat: "NHWC",
        dilations: [info.strideHeight, info.strideWidth],
      },
    );
    if (out.shape[1] !== kh || out.shape[2] !== kw) {
      temps.push(out);
      out = run("Slice", { x: out }, { begin: [0, 0, 0, 0], size: [ci, kh, kw, co] });
    }
    temps.push(out);
    const dw = run("Transpose", { x: out }, { perm: [1, 2, 0, 3] });
    for (const t of temps) backend.disposeData(t.dataId);
    return dw;
  };
}

// ∂L/∂x of a max pool (NHWC), from x and dy: each window's gradient goes to the first
// position holding its maximum (row-major scan), summed where windows overlap.
function poolGradient(tf) {
  return ({ inputs, attrs, backend }) => {
    const { dy, input } = inputs;
    const { filterSize, strides, pad, dimRoundingMode } = attrs;
    const info = tf.backend_util.computePool2DInfo(
      input.shape,
      filterSize,
      strides,
      1,
      pad,
      dimRoundingMode,
    );
    const { batchSize, inHeight: H, inWidth: W, inChannels: C, outHeight, outWidth } = info;
    const { strideHeight, strideWidth, filterHeight, filterWidth } = info;
    const { top, left } = info.padInfo;
    const x = backend.readSync(input.dataId);
    const g = backend.readSync(dy.dataId);
    const out = backend.makeOutput(input.shape, "float32");
    const dx = backend.typedArrayFromHeap(out);
    dx.fill(0);
    let o = 0;
    for (let b = 0; b < batchSize; b++) {
      const base = b * H * W * C;
      for (let r = 0; r < outHeight; r++) {
        const r0 = r * strideHeight - top;
        for (let c = 0; c < outWidth; c++) {
          const c0 = c * strideWidth - left;
          for (let d = 0; d < C; d++, o++) {
            let best = -Infinity;
            let at = -1;
            for (let i = Math.max(r0, 0); i < Math.min(r0 + filterHeight, H); i++) {
              for (let j = Math.max(c0, 0); j < Math.min(c0 + filterWidth, W); j++) {
                const k = base + (i * W + j) * C + d;
                if (x[k] > best || at < 0) {
                  best = x[k];
                  at = k;
                }
              }
            }
            if (at >= 0) dx[at] += g[o];
          }
        }
      }
    }
    return out;
  };
}

// Register the wasm backend with `tf` (once); throws if its files are not there.
export async function loadWasm(tf) {
  if (tf.findBackendFactory("wasm")) return;
  wasmLoading ??= (async () => {
    const wasm = await loadScript(WASM_SCRIPT, tf);
    // Fetch the .wasm files from this server (never a CDN).
    wasm.setWasmPaths(WASM_DIR);
    const replace = { Conv2DBackpropFilter: filterGradient(tf), MaxPoolGrad: poolGradient(tf) };
    for (const [kernelName, kernelFunc] of Object.entries(replace)) {
      if (tf.getKernel(kernelName, "wasm")) tf.unregisterKernel(kernelName, "wasm");
      tf.registerKernel({ kernelName, backendName: "wasm", kernelFunc });
    }
  })();
  try {
    await wasmLoading;
  } catch (err) {
    wasmLoading = null;
    throw err;
  }
}

// Make `name` the active backend; false (with the reason in `why`) if it cannot be used
// here: WebGL only counts where it renders float32 textures (training in full precision).
export async function useBackend(tf, name, why = () => {}) {
  try {
    if (name === "wasm") await loadWasm(tf);
    if (!BACKENDS.includes(name)) throw new Error(`unknown backend ${name}`);
    if (!(await tf.setBackend(name))) throw new Error("it failed to start");
    await tf.ready();
    if (name === "webgl" && !tf.env().getBool("WEBGL_RENDER_FLOAT32_CAPABLE"))
      throw new Error("this WebGL cannot compute in float32");
    return true;
  } catch (err) {
    why(`backend ${name} is not available here: ${err.message}`);
    return false;
  }
}

// The fastest backend that works here ("auto"), or `wanted` if it works; the name in use.
export async function chooseBackend(tf, wanted = "auto", why = () => {}) {
  const order = wanted === "auto" ? BACKENDS : [wanted, ...BACKENDS.filter((b) => b !== wanted)];
  for (const name of order) {
    if (await useBackend(tf, name, why)) return name;
  }
  throw new Error("no TensorFlow.js backend works in this browser");
}
