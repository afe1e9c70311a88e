"""Print a ``/predict`` request body made of a stored dataset version's held-out examples.

    python examples/predict_body.py DATASET [--version N] [--rows K] [--store URL]
        [--score-threshold S] [--max-detections M] [--png FILE] > body.json

The examples are the version's test split (its training split when it has none), the
first ``--rows`` of them (default 1), exactly as the model was trained on them: images as
``(C, H, W)`` floats in [0, 1]. For a detector, ``--score-threshold`` and
``--max-detections`` go into the body as request options. The store is ``--store``, else
``$FEDGE_STORE``, else ``./fedge-store``. ``--png FILE`` also writes the first example as
an 8-bit PNG image (grayscale or RGB), the file a device would post to ``/predict`` with
``Content-Type: image/png``.
"""

import argparse
import json
import sys

from fedge.central.datasets import DatasetStore
from fedge.central.storage import default_store_url, open_store

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("dataset")
parser.add_argument("--version", default="latest", help="version number (default latest)")
parser.add_argument("--rows", type=int, default=1, help="examples in the body (default 1)")
parser.add_argument("--store", help="store URL (default $FEDGE_STORE, else ./fedge-store)")
parser.add_argument("--score-threshold", type=float, help="detectors: lowest score")
parser.add_argument("--max-detections", type=int, help="detectors: boxes per example")
parser.add_argument("--png", help="also write the first example here as a PNG image")
args = parser.parse_args()

datasets = DatasetStore(open_store(args.store or default_store_url()))
version = datasets.get(args.dataset, args.version)
arrays = datasets.load(version)
x = arrays.x_test if arrays.x_test is not None and len(arrays.x_test) else arrays.x
body = {"instances": x[: args.rows].tolist()}
if args.score_threshold is not None:
    body["score_threshold"] = args.score_threshold
if args.max_detections is not None:
    body["max_detections"] = args.max_detections
if args.png:
    import numpy as np
    from PIL import Image

    pixels = np.round(np.clip(x[0], 0, 1) * 255).astype(np.uint8)  # (C, H, W)
    if pixels.ndim != 3 or pixels.shape[0] not in (1, 3):
        sys.exit(f"--png needs (C, H, W) images with 1 or 3 channels, got {list(pixels.shape)}")
    image = pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0)
    Image.fromarray(image, "L" if pixels.shape[0] == 1 else "RGB").save(args.png)
json.dump(body, sys.stdout)
print(f"{len(body['instances'])} example(s) of {version.ref}", file=sys.stderr)
