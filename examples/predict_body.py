"""Print a ``/predict`` request body made of a stored dataset version's held-out examples.

    python examples/predict_body.py DATASET [--version N] [--rows K] [--store URL]
        [--score-threshold S] [--max-detections M] > body.json

The examples are the version's test split (its training split when it has none), the
first ``--rows`` of them (default 1), exactly as the model was trained on them: images as
``(C, H, W)`` floats in [0, 1]. For a detector, ``--score-threshold`` and
``--max-detections`` go into the body as request options. The store is ``--store``, else
``$FEDGE_STORE``, else ``./fedge-store``.
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
json.dump(body, sys.stdout)
print(f"{len(body['instances'])} example(s) of {version.ref}", file=sys.stderr)
