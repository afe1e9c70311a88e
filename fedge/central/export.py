"""Frozen models for serving and devices: ONNX export, verified against PyTorch.

The graph has one float32 input ``input`` of shape ``(batch, *input_shape)`` and one
output ``logits`` of shape ``(batch, *output_shape)`` (``(batch, classes)`` for a
classifier, the raw map for a detector); the batch axis is dynamic, and the weights
keep their spec names (``conv2d0.weight``, ...) as ONNX initializers, except GroupNorm's
scale and shift: the exporter lowers GroupNorm to InstanceNormalization and stores them
reshaped to ``(C, 1, 1)`` under generated names. The export uses
``torch.onnx``'s ``torch.export``-based exporter, the default since PyTorch 2.9 (it needs
``onnxscript``): the older TorchScript exporter (``dynamo=False``) still runs on 2.13 but
warns that it will be removed. Opset 18 runs on onnxruntime 1.14 and later, including
onnxruntime-web.

Every export is checked: onnxruntime runs it on random inputs at two batch sizes, and each
output must match PyTorch's to ``atol + rtol * max|torch output|`` (defaults 1e-4 and 1e-5,
the maximum over the batch), or :class:`ExportError` is raised. The relative term matters
only for outputs far above 1, where float32 rounding alone exceeds a fixed 1e-4 (logits
near 3,000 differ by ~1e-3 between two correct runtimes); for ordinary logits the bound is
the absolute 1e-4.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import onnxruntime as ort
import torch

from fedge.central.registry import ONNX_FILE
from fedge.central.weights import load_model, params_to_bytes
from fedge.errors import ExportError
from fedge.models.spec import ModelSpec

__all__ = [
    "BUNDLE_FILES",
    "INPUT_NAME",
    "ONNX_FILE",
    "OPSET",
    "OUTPUT_NAME",
    "export_bundle",
    "export_onnx",
    "verify_onnx",
]

OPSET = 18
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
BUNDLE_FILES = (ONNX_FILE, "model.safetensors", "model.json")


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's chatter that says nothing about the model (it logs that
    torchvision's detection ops are unavailable, and trips a pytree deprecation)."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)
            yield
    finally:
        logger.setLevel(level)


def verify_onnx(
    onnx_model: bytes,
    model: torch.nn.Module,
    spec: ModelSpec,
    *,
    atol: float = 1e-4,
    rtol: float = 1e-5,
    batch_sizes: Sequence[int] = (1, 7),
    seed: int = 0,
) -> float:
    """Run ``onnx_model`` with onnxruntime and ``model`` with PyTorch on the same standard
    normal inputs, one batch per entry of ``batch_sizes``.

    Returns the largest absolute difference of their outputs; raises :class:`ExportError`
    if the shapes differ or an output differs by more than ``atol + rtol * max|expected|``
    (the largest PyTorch output of the batch sets the scale of float32 rounding).
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    generator = torch.Generator().manual_seed(seed)
    differences = []
    within = True
    try:
        session = ort.InferenceSession(
            onnx_model, sess_options=options, providers=["CPUExecutionProvider"]
        )
        for n in batch_sizes:
            x = torch.randn(n, *spec.input_shape, generator=generator)
            with torch.no_grad():
                expected = model(x).numpy()
            (got,) = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})
            if got.shape != expected.shape:
                raise ExportError(
                    f"ONNX model of {spec.name!r} outputs shape {list(got.shape)} for batch "
                    f"{n}, PyTorch {list(expected.shape)}"
                )
            difference = np.abs(got - expected)
            differences.append(float(np.max(difference)))
            # Written so that NaN anywhere fails the comparison.
            within &= bool(np.all(difference <= atol + rtol * np.max(np.abs(expected))))
    except ExportError:
        raise
    except Exception as exc:  # onnxruntime's error types live in a private module
        raise ExportError(f"onnxruntime cannot run the ONNX model of {spec.name!r}: {exc}") from exc
    worst = float(np.max(differences))
    if not within:
        raise ExportError(
            f"ONNX model of {spec.name!r} disagrees with PyTorch: max |difference| "
            f"{worst:.3g}, allowed {atol:g} + {rtol:g} x max|output|"
        )
    return worst


def export_onnx(
    spec: ModelSpec,
    params: Mapping[str, torch.Tensor],
    *,
    verify: bool = True,
    atol: float = 1e-4,
    rtol: float = 1e-5,
) -> bytes:
    """The model ``spec`` with weights ``params`` as a serialized ONNX model.

    Parameters
    ----------
    spec:
        The model spec.
    params:
        Its weights, named and shaped as the spec says (checked).
    verify:
        Check the export against PyTorch with :func:`verify_onnx` (default ``True``).
    atol, rtol:
        The check accepts output differences up to ``atol + rtol * max|output|``
        (defaults 1e-4 and 1e-5).
    """
    model = load_model(spec, params)
    example = torch.zeros(2, *spec.input_shape)
    try:
        with _quiet_exporter():
            program = torch.onnx.export(
                model,
                (example,),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=OPSET,
                dynamo=True,
                dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
                verbose=False,
            )
    except ImportError as exc:
        raise ExportError(f"ONNX export needs onnxscript ({exc}): pip install onnxscript") from exc
    except torch.onnx.errors.OnnxExporterError as exc:
        raise ExportError(f"cannot export {spec.name!r} to ONNX: {exc}") from exc
    if program is None:
        raise ExportError(f"the ONNX exporter returned no model for {spec.name!r}")
    data = program.model_proto.SerializeToString()
    if verify:
        verify_onnx(data, model, spec, atol=atol, rtol=rtol)
    return data


def export_bundle(
    spec: ModelSpec,
    params: Mapping[str, torch.Tensor],
    *,
    atol: float = 1e-4,
    rtol: float = 1e-5,
) -> dict[str, bytes]:
    """The frozen-model bundle a registry version holds: ``model.onnx`` (verified),
    ``model.safetensors`` and ``model.json``."""
    return {
        ONNX_FILE: export_onnx(spec, params, atol=atol, rtol=rtol),
        "model.safetensors": params_to_bytes(params),
        "model.json": spec.model_dump_json(indent=2).encode(),
    }
