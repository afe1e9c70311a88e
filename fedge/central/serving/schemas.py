"""The shapes of the inference server's JSON bodies, for its OpenAPI document.

The handlers parse request bodies themselves (:mod:`fedge.central.serving.payload`: orjson
for speed, exact errors for NaN, ragged rows or float32 overflow); these models describe
the same bodies for clients and tools, and the tests check real answers against them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

__all__ = [
    "ErrorBody",
    "InferInput",
    "InferOutput",
    "InferRequest",
    "InferResponse",
    "ModelMetadata",
    "ModelReady",
    "PredictRequest",
    "PredictResponse",
    "SamplesRequest",
    "SamplesResponse",
    "ServerMetadata",
]

Number = float | int


class ErrorBody(BaseModel):
    """Every error answer: what went wrong, in one sentence."""

    error: str


class PredictRequest(BaseModel):
    """``POST /predict``: examples, each shaped like the model's input (or flat)."""

    model: str | None = Field(None, description="the model; default the only one served")
    version: str | int | None = Field(None, description="a version number or alias")
    instances: list[Any] = Field(description="examples: nested lists of numbers")
    score_threshold: float | None = Field(
        None, ge=0, le=1, description="detectors only: the lowest score kept (default the model's)"
    )
    max_detections: int | None = Field(
        None, ge=1, le=1000, description="detectors only: most detections per example"
    )


class PredictResponse(BaseModel):
    prediction: list[int] | list[list[list[float]]] = Field(
        description="a classifier: the most likely class of each example; a detector: per "
        "example the rows [class_index, score, xmin, ymin, xmax, ymax], best score first, "
        "corners normalised to [0, 1] by the image's width and height"
    )
    probabilities: list[list[float]] | None = Field(
        None, description="classifiers: softmax of each example's logits"
    )
    model: str
    version: int


class InferInput(BaseModel):
    name: str
    shape: list[int]
    datatype: Literal[
        "FP16",
        "FP32",
        "FP64",
        "INT8",
        "INT16",
        "INT32",
        "INT64",
        "UINT8",
        "UINT16",
        "UINT32",
        "UINT64",
    ]
    data: list[Any] = Field(description="the values, flat or nested, row-major")


class InferOutput(BaseModel):
    name: Literal["logits", "probabilities", "label", "output", "detections"] = Field(
        description="classifiers: logits, probabilities, label; detectors: output (the raw "
        "map) and detections (rows [instance, class, score, xmin, ymin, xmax, ymax])"
    )


class InferParameters(BaseModel):
    """Detectors only: decoding options of the ``detections`` output."""

    score_threshold: float | None = Field(None, ge=0, le=1)
    max_detections: int | None = Field(None, ge=1, le=1000)


class InferRequest(BaseModel):
    """Open Inference Protocol (KServe v2) request: one input tensor."""

    id: str | None = None
    inputs: list[InferInput]
    outputs: list[InferOutput] | None = Field(None, description="default: every output")
    parameters: InferParameters | None = None


class InferTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    data: list[Number]


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[InferTensor]


class SamplesRequest(BaseModel):
    """``POST /v2/models/{name}/samples``: labelled examples from a device."""

    instances: list[Any] = Field(description="examples, shaped like the model's input")
    labels: list[int] = Field(description="one class index per example")


class SamplesResponse(BaseModel):
    dataset: str
    version: int = Field(description="the dataset version that now holds the samples")
    ref: str
    sha256: str
    samples: int
    total: int = Field(description="training examples in that version")


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    version: str
    aliases: dict[str, int]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ModelReady(BaseModel):
    name: str
    ready: bool
    version: str | None = None
    reason: str | None = Field(None, description="why a model that is not ready cannot load")


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]
