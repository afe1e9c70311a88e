"""Declarative model specs: one JSON document, built into a ``torch.nn.Module`` here and
into a TensorFlow.js model in the browser.

A spec is ``{"name": ..., "input_shape": [C, H, W] or [D], "layers": [...]}``. Layer
semantics are fixed so that every runtime builds the same function from the same weights:

``conv2d``  ``{"filters": F, "kernel_size": K, "stride": 1, "padding": "valid" | "same"}``
    Cross-correlation over channel-first input ``(C, H, W)``. ``"valid"`` adds no padding;
    ``"same"`` pads ``(K-1)/2`` on every side and needs an odd ``K`` and stride 1 (so that
    no runtime has to choose where an odd pad goes). Weight ``(F, C, K, K)``, bias ``(F,)``.
``maxpool2d``  ``{"pool_size": P, "stride": P}``
    Max over ``P×P`` windows, no padding, trailing rows/columns that do not fill a window
    are dropped (floor).
``flatten``
    Channel-major (``C, H, W``) order, i.e. the row-major order of a ``(C, H, W)`` array.
    A runtime that stores images channel-last must transpose to ``(C, H, W)`` first.
``dense``  ``{"units": U, "bias": true}``
    ``y = x Wᵀ + b`` with weight ``(U, D_in)`` and bias ``(U,)``.
``relu``, ``tanh``, ``sigmoid``
    Element-wise activations.

Weights are named ``"{layer name}.weight"`` / ``"{layer name}.bias"``, where a layer's name
defaults to ``"{type}{index}"`` (e.g. ``"conv2d0.weight"``), and travel in these shapes.
The model outputs logits; the loss is softmax cross-entropy.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError

from fedge.errors import ModelSpecError

__all__ = [
    "ModelSpec",
    "build_model",
    "count_parameters",
    "fast_layout",
    "load_spec",
    "preset_spec",
]


class _Layer(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str | None = None


class Conv2d(_Layer):
    type: Literal["conv2d"]
    filters: PositiveInt
    kernel_size: PositiveInt
    stride: PositiveInt = 1
    padding: Literal["valid", "same"] = "valid"


class MaxPool2d(_Layer):
    type: Literal["maxpool2d"]
    pool_size: PositiveInt
    stride: PositiveInt | None = None


class Flatten(_Layer):
    type: Literal["flatten"]


class Dense(_Layer):
    type: Literal["dense"]
    units: PositiveInt
    bias: bool = True


class Activation(_Layer):
    type: Literal["relu", "tanh", "sigmoid"]


Layer = Annotated[Conv2d | MaxPool2d | Flatten | Dense | Activation, Field(discriminator="type")]


class ModelSpec(BaseModel):
    """A validated model spec (see the module docstring for layer semantics)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "model"
    input_shape: tuple[PositiveInt, ...]
    layers: tuple[Layer, ...] = Field(min_length=1)

    def output_shapes(self) -> list[tuple[int, ...]]:
        """Shape after each layer (without the batch axis); raises on inconsistent layers."""
        shape = tuple(self.input_shape)
        shapes = []
        for i, layer in enumerate(self.layers):
            shape = _infer(layer, shape, f"layer {i} ({layer.type})")
            shapes.append(shape)
        return shapes

    def layer_names(self) -> list[str]:
        names = [layer.name or f"{layer.type}{i}" for i, layer in enumerate(self.layers)]
        if len(set(names)) != len(names):
            raise ModelSpecError(f"layer names must be unique, got {names}")
        return names


def _infer(layer: Any, shape: tuple[int, ...], where: str) -> tuple[int, ...]:
    if isinstance(layer, Conv2d | MaxPool2d):
        if len(shape) != 3:
            raise ModelSpecError(f"{where} needs (C, H, W) input, got shape {list(shape)}")
        c, h, w = shape
        if isinstance(layer, Conv2d):
            k, s = layer.kernel_size, layer.stride
            if layer.padding == "same":
                if k % 2 == 0 or s != 1:
                    raise ModelSpecError(f"{where}: 'same' padding needs an odd kernel, stride 1")
                return (layer.filters, h, w)
            if k > h or k > w:
                raise ModelSpecError(f"{where}: kernel {k} larger than input {h}x{w}")
            return (layer.filters, (h - k) // s + 1, (w - k) // s + 1)
        p, s = layer.pool_size, layer.stride or layer.pool_size
        if p > h or p > w:
            raise ModelSpecError(f"{where}: pool {p} larger than input {h}x{w}")
        return (c, (h - p) // s + 1, (w - p) // s + 1)
    if isinstance(layer, Flatten):
        return (math.prod(shape),)
    if isinstance(layer, Dense):
        if len(shape) != 1:
            raise ModelSpecError(
                f"{where} needs flat input, got shape {list(shape)}: add a flatten layer"
            )
        return (layer.units,)
    return shape


def _module(layer: Any, in_shape: tuple[int, ...]) -> torch.nn.Module:
    if isinstance(layer, Conv2d):
        pad = (layer.kernel_size - 1) // 2 if layer.padding == "same" else 0
        return torch.nn.Conv2d(in_shape[0], layer.filters, layer.kernel_size, layer.stride, pad)
    if isinstance(layer, MaxPool2d):
        return torch.nn.MaxPool2d(layer.pool_size, layer.stride or layer.pool_size)
    if isinstance(layer, Flatten):
        return torch.nn.Flatten()
    if isinstance(layer, Dense):
        return torch.nn.Linear(in_shape[0], layer.units, bias=layer.bias)
    return {"relu": torch.nn.ReLU, "tanh": torch.nn.Tanh, "sigmoid": torch.nn.Sigmoid}[layer.type]()


def build_model(spec: ModelSpec, *, seed: int = 0) -> torch.nn.Sequential:
    """Build ``spec`` as a ``torch.nn.Sequential`` with PyTorch's default initialization.

    The initial weights depend only on ``seed``; the global torch RNG is left untouched.
    """
    shapes = [tuple(spec.input_shape), *spec.output_shapes()]
    modules: OrderedDict[str, torch.nn.Module] = OrderedDict()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name, layer, in_shape in zip(spec.layer_names(), spec.layers, shapes, strict=False):
            modules[name] = _module(layer, in_shape)
    return torch.nn.Sequential(modules)


def fast_layout(model: torch.nn.Module) -> torch.nn.Module:
    """Put ``model``'s convolution weights in channels-last memory layout, in place.

    The function the model computes is unchanged, but oneDNN runs convolutions and pooling
    in this layout much faster on a CPU (the LeNet CNN: evaluation about 2x, training
    5-17% faster). Use it for work-area models; parameters read out of such a model are
    not contiguous in the usual sense, so copy them with ``clone(memory_format=
    torch.contiguous_format)`` (as :func:`fedge.fl.local.get_params` does) before saving
    or flattening them. Models without convolutions are left as they are.
    """
    if any(isinstance(m, torch.nn.Conv2d) for m in model.modules()):
        model.to(memory_format=torch.channels_last)
    return model


def count_parameters(model: torch.nn.Module) -> int:
    """Number of trainable scalars in ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _parse(data: Any, source: str) -> ModelSpec:
    try:
        spec = ModelSpec.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(part) for part in err["loc"])
        raise ModelSpecError(f"invalid model spec {source}: {loc}: {err['msg']}") from None
    spec.output_shapes()
    spec.layer_names()
    return spec


def load_spec(source: str | Path | dict[str, Any]) -> ModelSpec:
    """Read and validate a spec from a JSON file path or an already-parsed dict."""
    if isinstance(source, dict):
        return _parse(source, "(inline)")
    path = Path(source)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelSpecError(f"model spec not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelSpecError(f"model spec {path} is not valid JSON: {exc}") from None
    return _parse(data, str(path))


def preset_spec(
    name: str,
    input_shape: Sequence[int],
    num_classes: int,
    *,
    hidden: Sequence[int] = (200, 200),
) -> ModelSpec:
    """Specs of the standard models.

    ``logreg``
        Multinomial logistic regression: flatten, dense(num_classes).
    ``mlp``
        McMahan et al.'s "2NN": flatten, then ``hidden`` dense+ReLU layers (default two of
        200), then dense(num_classes).
    ``lenet``
        NIID-Bench's LeNet-style CNN (Li et al., ICDE 2022): conv 6@5×5, ReLU, pool 2,
        conv 16@5×5, ReLU, pool 2, flatten, dense 120, ReLU, dense 84, ReLU,
        dense(num_classes). On 1×28×28 input the flattened size is 16·4·4 = 256.
    """
    layers: list[dict[str, Any]] = [{"type": "flatten"}]
    if name == "mlp":
        for units in hidden:
            layers += [{"type": "dense", "units": units}, {"type": "relu"}]
    elif name == "lenet":
        layers = [
            {"type": "conv2d", "filters": 6, "kernel_size": 5},
            {"type": "relu"},
            {"type": "maxpool2d", "pool_size": 2},
            {"type": "conv2d", "filters": 16, "kernel_size": 5},
            {"type": "relu"},
            {"type": "maxpool2d", "pool_size": 2},
            {"type": "flatten"},
            {"type": "dense", "units": 120},
            {"type": "relu"},
            {"type": "dense", "units": 84},
            {"type": "relu"},
        ]
    elif name != "logreg":
        raise ModelSpecError(f"unknown model preset {name!r}: choose logreg, mlp or lenet")
    layers.append({"type": "dense", "units": num_classes})
    return _parse({"name": name, "input_shape": list(input_shape), "layers": layers}, name)
