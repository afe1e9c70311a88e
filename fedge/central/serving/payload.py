"""Request bodies in, arrays out: the checks every inference request passes.

Two formats are read:

- the Open Inference Protocol (KServe v2) ``infer`` request, ``{"id": ..., "inputs":
  [{"name": "input", "shape": [n, ...], "datatype": "FP32", "data": [...]}], "outputs":
  [{"name": "probabilities"}]}``, where ``data`` is the tensor's values in row-major order,
  flat or nested;
- the simple ``{"instances": [x1, x2, ...]}`` of ``/predict``, one nested list (or flat
  list) of numbers per example.

A detection model's requests may set ``score_threshold`` (0 to 1) and ``max_detections``
(1 to 1000), in the body (``/predict``), in the v2 request's ``parameters``, or in the
query string (:func:`detection_options`).

Every problem raises :class:`~fedge.errors.RequestRejected` with a message that names it and
the HTTP status to answer with (400, or 413 for too many rows): a client mistake never
becomes a server error.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from fedge.central.edge import softmax
from fedge.errors import DataError, RequestRejected
from fedge.images import read_image
from fedge.tasks.responses import decode_detections

__all__ = [
    "DETECTION_OUTPUTS",
    "MAX_DETECTIONS",
    "OUTPUTS",
    "Body",
    "InferRequest",
    "detection_options",
    "detection_outputs_for",
    "outputs_for",
    "parse_infer",
    "parse_json",
    "parse_predict",
    "parse_samples",
]

# What a model answers: its logits, their softmax, and the arg-max class.
OUTPUTS = {"logits": "FP32", "probabilities": "FP32", "label": "INT64"}
# What a detector answers: its raw output map, and the decoded detections as rows
# [instance, class, score, xmin, ymin, xmax, ymax] (corners in [0, 1]).
DETECTION_OUTPUTS = {"output": "FP32", "detections": "FP32"}
# The most detections a request may ask for per instance.
MAX_DETECTIONS = 1000
_FLOAT_TYPES = {"FP16", "FP32", "FP64"}
_INT_TYPES = {f"{sign}INT{bits}" for sign in ("", "U") for bits in (8, 16, 32, 64)}


@dataclass(frozen=True)
class InferRequest:
    """A checked v2 ``infer`` request: the batch, the outputs asked for, the request id."""

    x: np.ndarray
    outputs: tuple[str, ...]
    id: str | None
    parameters: dict[str, Any] | None = None


@dataclass(frozen=True)
class Body:
    """A parsed JSON request body, and whether its text holds ``true`` or ``false`` at all
    (only then must arrays be searched for booleans that NumPy would read as 1 and 0)."""

    doc: dict[str, Any]
    may_hold_bools: bool

    def get(self, key: str, default: Any = None) -> Any:
        return self.doc.get(key, default)


def parse_json(body: bytes) -> Body:
    """``body`` as a JSON object.

    orjson parses first (several times faster on long number lists); a body it refuses is
    parsed again by the standard library, which names the problem or reads the ``NaN`` and
    ``Infinity`` that orjson does not accept, for the finiteness check to name.
    """
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        try:
            doc = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RequestRejected(f"the request body is not JSON: {exc}") from None
        except RecursionError:
            raise RequestRejected("the request body nests too deeply to be read") from None
    if not isinstance(doc, dict):
        raise RequestRejected(f"the request body must be a JSON object, got {type(doc).__name__}")
    return Body(doc, may_hold_bools=b"true" in body or b"false" in body)


def _has_bool(value: Any) -> bool:
    if isinstance(value, list):
        return any(_has_bool(v) for v in value)
    return isinstance(value, bool)


def _numbers(data: Any, what: str, body: Body, *, integers: bool = False) -> np.ndarray:
    """``data`` (nested lists of JSON numbers) as a NumPy array; refuses strings, booleans,
    nulls, objects and ragged nesting."""
    if not isinstance(data, list):
        raise RequestRejected(f"{what} must be a list of numbers, got {type(data).__name__}")
    try:
        array = np.array(data)
    except (ValueError, OverflowError):
        raise RequestRejected(
            f"{what} is ragged or holds non-numbers: nested lists must have equal lengths"
        ) from None
    # NumPy reads [True, 2.0] as [1.0, 2.0]: booleans are refused by a walk over the
    # values, paid only when the body's text holds true or false somewhere.
    kinds = "iu" if integers else "iuf"
    if array.dtype.kind not in kinds or (body.may_hold_bools and _has_bool(data)):
        wanted = "integers" if integers else "numbers"
        raise RequestRejected(
            f"{what} must hold only {wanted} (no strings, booleans, nulls or objects)"
        )
    return array


def _finite_float32(array: np.ndarray, what: str) -> np.ndarray:
    x = array.astype(np.float32)
    if not np.isfinite(x).all():
        bad = int(np.argwhere(~np.isfinite(x).reshape(len(x), -1))[0][0])
        raise RequestRejected(
            f"{what} holds NaN or infinity (or a value beyond float32's range) in row {bad}"
        )
    return x


def _check_rows(n: int, max_rows: int, what: str) -> None:
    if n < 1:
        raise RequestRejected(f"{what} is empty: send at least one example")
    if n > max_rows:
        raise RequestRejected(
            f"{what} has {n} rows, more than this server's limit of {max_rows} per request",
            status=413,
        )


def _instances(
    data: Any, body: Body, input_shape: Sequence[int], max_rows: int, what: str = "instances"
) -> np.ndarray:
    """A list of examples (each nested in ``input_shape`` or flat) as a float32 batch."""
    if isinstance(data, list):
        _check_rows(len(data), max_rows, what)
    array = _numbers(data, what, body)
    shape = tuple(input_shape)
    size = math.prod(shape)
    if array.shape[1:] == shape or array.shape[1:] == (size,):
        return _finite_float32(array.reshape(len(array), *shape), what)
    got = list(array.shape[1:])
    raise RequestRejected(
        f"each of the {what} must have shape {list(shape)} (or {size} numbers flat), got {got}"
    )


#: Media types ``/predict`` reads as one image (the body is the file).
IMAGE_TYPES = ("image/png", "image/jpeg")


def parse_image(data: bytes, input_shape: Sequence[int]) -> np.ndarray:
    """A ``/predict`` body that is a PNG or JPEG file: one example, its 8-bit pixels divided
    by 255 as training images are (:func:`fedge.central.edge_images.load_image`), of the
    model's exact size and channels (grayscale for 1, RGB for 3); no resizing."""
    shape = tuple(input_shape)
    if len(shape) != 3 or shape[0] not in (1, 3):
        raise RequestRejected(
            f"this model takes inputs of shape {list(shape)}, not images: send JSON instances"
        )
    try:
        pixels = read_image(data, "the request's image", size=(shape[1], shape[2]))
    except DataError as exc:
        raise RequestRejected(str(exc)) from None
    if pixels.shape[0] != shape[0]:
        mode = {1: "grayscale (L)", 3: "RGB"}
        raise RequestRejected(
            f"the request's image is {mode[pixels.shape[0]]}; the model takes "
            f"{mode[shape[0]]} images"
        )
    return (pixels.astype(np.float32) / 255.0)[None]


def parse_predict(body: Body, input_shape: Sequence[int], max_rows: int) -> np.ndarray:
    """The batch of a ``/predict`` body ``{"instances": [...]}``."""
    if "instances" not in body.doc:
        raise RequestRejected('the body must have "instances": a list of examples')
    return _instances(body.doc["instances"], body, input_shape, max_rows)


def parse_samples(
    body: Body, input_shape: Sequence[int], num_classes: int, max_rows: int
) -> tuple[np.ndarray, np.ndarray]:
    """The examples and labels of a ``samples`` body ``{"instances": [...], "labels": [...]}``
    (labels are class indices in ``[0, num_classes)``)."""
    x = parse_predict(body, input_shape, max_rows)
    if "labels" not in body.doc:
        raise RequestRejected('the body must have "labels": one class index per instance')
    y = _numbers(body.doc["labels"], "labels", body, integers=True)
    if y.shape != (len(x),):
        raise RequestRejected(
            f"labels must be a flat list of {len(x)} class indices (one per instance), "
            f"got shape {list(y.shape)}"
        )
    if y.min() < 0 or y.max() >= num_classes:
        raise RequestRejected(f"labels must lie in [0, {num_classes}), got {y.min()}..{y.max()}")
    return x, y.astype(np.int64)


def _query_number(text: str, key: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise RequestRejected(f"{key} must be a number, got {text[:40]!r}") from None


def detection_options(
    sources: Sequence[Mapping[str, Any] | None], *, detection: bool
) -> dict[str, Any]:
    """``score_threshold`` and ``max_detections`` from the first of ``sources`` (a body,
    its ``parameters``, the query string) that sets each, checked: the threshold a number
    in [0, 1], the count an integer in [1, :data:`MAX_DETECTIONS`]. A model that is not a
    detector (``detection`` false) refuses them."""
    options: dict[str, Any] = {}
    for key in ("score_threshold", "max_detections"):
        value = next((s[key] for s in sources if s is not None and key in s), None)
        if value is None:
            continue
        if not detection:
            raise RequestRejected(f"{key} applies to detection models only; this one classifies")
        if isinstance(value, str):
            value = _query_number(value, key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise RequestRejected(f"{key} must be a number, got {type(value).__name__}")
        if not math.isfinite(value):
            raise RequestRejected(f"{key} must be a finite number, got {value}")
        if key == "score_threshold":
            if not 0 <= value <= 1:
                raise RequestRejected(f"score_threshold must lie in [0, 1], got {value}")
            options[key] = float(value)
        else:
            if value != int(value) or not 1 <= value <= MAX_DETECTIONS:
                raise RequestRejected(
                    f"max_detections must be an integer in [1, {MAX_DETECTIONS}], got {value}"
                )
            options[key] = int(value)
    return options


def _shape(value: Any) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value
    ):
        raise RequestRejected(f'"shape" must be a list of non-negative integers, got {value!r}')
    return tuple(value)


def parse_infer(
    body: Body,
    input_name: str,
    input_shape: Sequence[int],
    max_rows: int,
    outputs: Mapping[str, str] = OUTPUTS,
) -> InferRequest:
    """A v2 ``infer`` body, checked against the model's one input ``input_name`` of shape
    ``(batch, *input_shape)`` and the model's ``outputs`` (name to datatype)."""
    doc = body.doc
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise RequestRejected(
            f'"inputs" must be a list of one tensor object (the model has one input, '
            f"{input_name!r})"
        )
    tensor = inputs[0]
    missing = [k for k in ("name", "shape", "datatype", "data") if k not in tensor]
    if missing:
        raise RequestRejected(f"the input tensor lacks {', '.join(map(repr, missing))}")
    if tensor["name"] != input_name:
        raise RequestRejected(
            f"unknown input {tensor['name']!r}: the model's input is {input_name!r}"
        )
    datatype = tensor["datatype"]
    if not isinstance(datatype, str) or datatype not in _FLOAT_TYPES | _INT_TYPES:
        shown = repr(datatype) if isinstance(datatype, str) else f"a JSON {type(datatype).__name__}"
        raise RequestRejected(
            f"datatype {shown[:40]} is not supported: send FP32 (or another numeric type)"
        )
    shape = _shape(tensor["shape"])
    expected = (shape[0] if shape else 0, *input_shape)
    if len(shape) != len(expected) or shape[1:] != tuple(input_shape):
        raise RequestRejected(
            f"input shape {list(shape)} does not fit the model: it takes [n, "
            f"{', '.join(map(str, input_shape))}]"
        )
    _check_rows(shape[0], max_rows, "the input")
    array = _numbers(tensor["data"], '"data"', body, integers=datatype in _INT_TYPES)
    if array.size != math.prod(shape):
        raise RequestRejected(
            f'"data" holds {array.size} values, shape {list(shape)} needs {math.prod(shape)}'
        )
    x = _finite_float32(array.reshape(shape), '"data"')

    wanted = doc.get("outputs")
    if wanted is None:
        names: tuple[str, ...] = tuple(outputs)
    else:
        if not isinstance(wanted, list) or not all(
            isinstance(o, dict) and isinstance(o.get("name"), str) for o in wanted
        ):
            raise RequestRejected('"outputs" must be a list of {"name": ...} objects')
        names = tuple(o["name"] for o in wanted)
        unknown = [n for n in names if n not in outputs]
        if unknown:
            raise RequestRejected(
                f"unknown output {unknown[0]!r}: outputs are {', '.join(outputs)}"
            )
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise RequestRejected(f'"id" must be a string, got {type(request_id).__name__}')
    parameters = doc.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise RequestRejected(f'"parameters" must be an object, got {type(parameters).__name__}')
    return InferRequest(x=x, outputs=names, id=request_id, parameters=parameters)


def outputs_for(logits: np.ndarray, names: Sequence[str]) -> list[dict[str, Any]]:
    """The v2 output tensors ``names`` computed from a batch of logits."""
    values = {
        "logits": logits,
        "probabilities": softmax(logits),
        "label": logits.argmax(axis=1).astype(np.int64),
    }
    return [
        {
            "name": name,
            "datatype": OUTPUTS[name],
            "shape": list(values[name].shape),
            "data": values[name].reshape(-1).tolist(),
        }
        for name in names
    ]


def detection_outputs_for(
    output: np.ndarray, names: Sequence[str], **decoding: Any
) -> list[dict[str, Any]]:
    """The v2 output tensors ``names`` of a batch of detector output maps: ``output`` the
    map itself, ``detections`` rows ``[instance, class, score, xmin, ymin, xmax, ymax]``
    (``decoding``: the arguments of :func:`~fedge.tasks.responses.decode_detections`)."""
    tensors = []
    for name in names:
        if name == "output":
            values = output
        else:
            rows = decode_detections(output, **decoding)
            values = np.concatenate(
                [np.zeros((0, 7), dtype=np.float32)]
                + [
                    np.concatenate([np.full((len(r), 1), i, dtype=np.float32), r], axis=1)
                    for i, r in enumerate(rows)
                ]
            )
        tensors.append(
            {
                "name": name,
                "datatype": DETECTION_OUTPUTS[name],
                "shape": list(values.shape),
                "data": values.reshape(-1).tolist(),
            }
        )
    return tensors
