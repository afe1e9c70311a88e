"""Does batching speed up the detector in onnxruntime? Images/s at batch 1 and 32.

    python benchmarks/detection_ort_batching.py [--checkpoint PATH] [--seconds S]

Exports the ``centernet`` preset (96×96, 10 classes) with the weights of ``--checkpoint``
(what ``benchmarks/detection.py --save-checkpoint`` wrote; default
``/tmp/det_full.safetensors``) to ONNX and runs it in onnxruntime with one intra-op thread,
as ``fedge serve --threads 1`` does, on random inputs for ``--seconds`` per batch size.
It explains the serving rows of the detection benchmark: micro-batching helps a model
whose batched call is cheaper per image, and this one's is not.
"""

import argparse
import time

import numpy as np
import onnxruntime as ort

from fedge.central.export import export_onnx
from fedge.central.weights import params_from_bytes
from fedge.models.spec import preset_spec

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--checkpoint", default="/tmp/det_full.safetensors")
parser.add_argument("--seconds", type=float, default=5.0)
args = parser.parse_args()

spec = preset_spec("centernet", (1, 96, 96), 10)
with open(args.checkpoint, "rb") as f:
    data = export_onnx(spec, params_from_bytes(f.read()))
options = ort.SessionOptions()
options.intra_op_num_threads = options.inter_op_num_threads = 1
session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
name = session.get_inputs()[0].name
rng = np.random.default_rng(0)
for batch in (1, 32):
    x = rng.random((batch, 1, 96, 96), dtype=np.float32)
    session.run(None, {name: x})
    images, start = 0, time.perf_counter()
    while time.perf_counter() - start < args.seconds:
        session.run(None, {name: x})
        images += batch
    rate = images / (time.perf_counter() - start)
    print(f"onnxruntime, 1 thread, batch {batch:2d}: {rate:6.0f} images/s")
