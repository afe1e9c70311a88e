// Examples from image files (a folder of images with a labels.csv) and from drawings on a
// canvas, decoded by the browser and turned into the model's input when a round starts
// (the input shape comes with the task's spec):
//   - each image is resized to the spec's (C, H, W) — drawn at H×W on a canvas with
//     high-quality smoothing; an image of that size already is copied pixel for pixel —
//     over a black background (transparent pixels count as black);
//   - C = 1: its luma, L = (19595·R + 38470·G + 7471·B + 2^15) >> 16, the ITU-R 601-2
//     weights with Pillow's rounding (Image.convert("L")); C = 3: R, G, B planes;
//   - values v / 255 in float32, as fedge's Python loaders scale 8-bit images
//     (fedge/data/fashion_mnist.py), channel-first like everywhere in fedge.
// Nothing leaves the browser.

import { DataError } from "./data.js";

export const IMAGE_TYPES = /\.(png|jpe?g|gif|webp|bmp|avif)$/i;

// ---- labels.csv -------------------------------------------------------------------------

// RFC 4180 fields (quotes, doubled quotes, commas and line breaks inside quotes) →
// [{line, fields}], blank lines left out.
export function csvRows(text, source) {
  const rows = [];
  let fields = [];
  let field = "";
  let quoted = false;
  let line = 1;
  let start = 1;
  const end = () => {
    fields.push(field);
    if (fields.length > 1 || fields[0].trim() !== "") rows.push({ line: start, fields });
    fields = [];
    field = "";
  };
  text = text.replace(/^\uFEFF/, "");
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') {
        field += '"';
        i++;
      } else if (c === '"') {
        quoted = false;
      } else {
        if (c === "\n") line++;
        field += c;
      }
    } else if (c === '"' && field === "") {
      quoted = true;
    } else if (c === ",") {
      fields.push(field);
      field = "";
    } else if (c === "\n" || c === "\r") {
      if (c === "\r" && text[i + 1] === "\n") i++;
      end();
      line++;
      start = line;
    } else {
      field += c;
    }
  }
  if (quoted) throw new DataError(`${source}: a quote opened on line ${start} is never closed`);
  if (field !== "" || fields.length) end();
  return rows;
}

// labels.csv → [{line, filename, label}]: a header line naming the columns `filename`
// and `label` (in any order; other columns are ignored), then one line per image; a
// label is a class number 0, 1, 2, … (the class's index in the model's output).
export function parseLabels(text, source = "labels.csv") {
  const rows = csvRows(text, source);
  if (!rows.length)
    throw new DataError(`${source} is empty: it needs a header line filename,label`);
  const header = rows[0].fields.map((f) => f.trim().toLowerCase());
  const file = header.indexOf("filename");
  const label = header.indexOf("label");
  if (file < 0 || label < 0) {
    const missing = [file < 0 && "filename", label < 0 && "label"].filter(Boolean).join(" and ");
    throw new DataError(
      `${source} has no column ${missing}: its first line must name the columns, ` +
        `e.g. filename,label (it is ${JSON.stringify(rows[0].fields.join(","))})`,
    );
  }
  const seen = new Map();
  const entries = rows.slice(1).map(({ line, fields }) => {
    if (fields.length !== header.length) {
      throw new DataError(
        `${source} line ${line} has ${fields.length} fields; the header has ${header.length}`,
      );
    }
    const filename = fields[file].trim().replaceAll("\\", "/").replace(/^\.\//, "");
    const text = fields[label].trim();
    if (!filename) throw new DataError(`${source} line ${line} has no filename`);
    if (!/^\d{1,9}$/.test(text)) {
      throw new DataError(
        `${source} line ${line}: unknown label ${JSON.stringify(text)} for ${filename}; ` +
          "a label is a class number 0, 1, 2, …",
      );
    }
    if (seen.has(filename)) {
      throw new DataError(
        `${source} line ${line} names ${filename} again (first on line ${seen.get(filename)})`,
      );
    }
    seen.set(filename, line);
    return { line, filename, label: Number(text) };
  });
  if (!entries.length) throw new DataError(`${source} has a header but no images`);
  return entries;
}

// ---- decoding -----------------------------------------------------------------------------

const pathOf = (file) => (file.webkitRelativePath || file.name).replaceAll("\\", "/");
const dirOf = (path) => path.slice(0, path.lastIndexOf("/") + 1);

async function decode(blob, name) {
  try {
    return await createImageBitmap(blob, {
      colorSpaceConversion: "none",
      premultiplyAlpha: "none",
    });
  } catch {
    throw new DataError(`${name} is not an image this browser can decode`);
  }
}

let canvas = null;

// The bitmap drawn at w×h over black → RGBA bytes.
function rgba(bitmap, w, h) {
  canvas ??= document.createElement("canvas");
  canvas.width = w;
  canvas.height = h;
  const ctx = canvas.getContext("2d", { willReadFrequently: true, alpha: false });
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, w, h);
  ctx.imageSmoothingEnabled = true;
  ctx.imageSmoothingQuality = "high";
  ctx.drawImage(bitmap, 0, 0, w, h);
  return ctx.getImageData(0, 0, w, h).data;
}

// RGBA bytes of an h×w image → its c×h×w values in [0, 1] written into `out` at `at`.
export function toInput(pixels, [c, h, w], out, at = 0) {
  const plane = h * w;
  for (let p = 0; p < plane; p++) {
    const r = pixels[4 * p];
    const g = pixels[4 * p + 1];
    const b = pixels[4 * p + 2];
    if (c === 1) {
      out[at + p] = ((19595 * r + 38470 * g + 7471 * b + 0x8000) >> 16) / 255;
    } else {
      out[at + p] = r / 255;
      out[at + plane + p] = g / 255;
      out[at + 2 * plane + p] = b / 255;
    }
  }
}

// Images (Blobs or Files) → Float32Array of n × C × H × W.
export async function imagesToInputs(images, inputShape, progress = () => {}) {
  if (inputShape.length !== 3 || ![1, 3].includes(inputShape[0])) {
    throw new DataError(
      `the model takes inputs of shape [${inputShape}]; images fit a model whose input is ` +
        "(1, H, W) (grayscale) or (3, H, W) (RGB)",
    );
  }
  const [, h, w] = inputShape;
  const size = h * w * inputShape[0];
  const x = new Float32Array(images.length * size);
  for (let i = 0; i < images.length; i++) {
    const { blob, name } = images[i];
    const bitmap = await decode(blob, name);
    let pixels;
    try {
      pixels = rgba(bitmap, w, h);
    } finally {
      bitmap.close();
    }
    toInput(pixels, inputShape, x, i * size);
    if (i % 50 === 49) progress(i + 1, images.length);
  }
  return x;
}

// A set of labelled images → the examples object of the page: {n, y, source, shape: null,
// images: [{blob, name}], inputs(inputShape) → {x, y, n, shape}} (x cached per shape).
export function imageExamples(images, labels, source, note = "") {
  const cache = new Map();
  return {
    kind: "images",
    images,
    names: images.map((i) => i.name),
    n: images.length,
    y: Int32Array.from(labels),
    shape: null,
    source,
    note,
    async inputs(inputShape, progress) {
      const key = inputShape.join(",");
      if (!cache.has(key)) {
        const x = await imagesToInputs(images, inputShape, progress);
        cache.clear();
        cache.set(key, x);
      }
      return { x: cache.get(key), y: this.y, n: this.n, shape: inputShape, names: this.names };
    },
  };
}

// Picked files (a folder, or several files) with one labels.csv → examples. The CSV's
// filenames are paths relative to the CSV's folder; a bare name also matches an image of
// that name elsewhere in the pick when only one has it. Images without a line in the CSV
// are left out (and counted in `note`).
export async function readImageFolder(files) {
  files = Array.from(files);
  let csvs = files.filter((f) => /\.csv$/i.test(f.name));
  const named = csvs.filter((f) => f.name.toLowerCase() === "labels.csv");
  if (csvs.length > 1 && named.length === 1) csvs = named;
  const images = files.filter((f) => IMAGE_TYPES.test(f.name));
  if (csvs.length === 0) {
    throw new DataError(
      `${images.length} images but no labels.csv: pick, with the images, a CSV file with a ` +
        "line filename,label and then one line per image",
    );
  }
  if (csvs.length > 1)
    throw new DataError(`pick one CSV file of labels, not ${csvs.map((f) => f.name).join(", ")}`);
  const csv = csvs[0];
  const entries = parseLabels(await csv.text(), csv.name);
  const base = dirOf(pathOf(csv));
  const byPath = new Map();
  const byName = new Map();
  for (const file of images) {
    const path = pathOf(file);
    byPath.set(path.startsWith(base) ? path.slice(base.length) : path, file);
    byName.set(file.name, byName.has(file.name) ? null : file);
  }
  const used = new Set();
  const picked = entries.map(({ line, filename }) => {
    const file = byPath.get(filename) ?? (filename.includes("/") ? null : byName.get(filename));
    if (!file) {
      const why =
        byName.get(filename) === null
          ? "several picked images have that name"
          : "it is not among the picked files";
      throw new DataError(`${csv.name} line ${line} names ${filename}, but ${why}`);
    }
    if (used.has(file))
      throw new DataError(`${csv.name} line ${line} names ${filename}, an image named before`);
    used.add(file);
    return { blob: file, name: filename };
  });
  // Decode each image once now, so that a broken file is reported when it is picked.
  for (const { blob, name } of picked) (await decode(blob, name)).close();
  const left = images.length - used.size;
  const [have, are] = left > 1 ? ["s have", "are"] : [" has", "is"];
  const note = left ? `${left} picked image${have} no line in ${csv.name} and ${are} left out` : "";
  const folder = base ? base.slice(0, -1) : "the picked files";
  return imageExamples(picked, entries.map((e) => e.label), `${csv.name} in ${folder}`, note);
}
