"""Declarative model specs: one JSON document, built into a ``torch.nn.Module`` here and
into a TensorFlow.js model in the browser.

A spec is ``{"name": ..., "input_shape": [C, H, W] or [D], "layers": [...]}``. Layer
semantics are fixed so that every runtime builds the same function from the same weights:

``conv2d``  ``{"filters": F, "kernel_size": K, "stride": 1, "padding": "valid" | "same" | P}``
    Cross-correlation over channel-first input ``(C, H, W)``. ``"valid"`` adds no padding;
    ``"same"`` pads ``(K-1)/2`` on every side and needs an odd ``K`` and stride 1 (so that
    no runtime has to choose where an odd pad goes). An integer ``P`` (``0 <= P < K``)
    pads ``P`` zeros on every side, at any stride: ``{"kernel_size": 3, "stride": 2,
    "padding": 1}`` halves an even ``H`` exactly. The output is ``floor((H + 2P - K) / S)
    + 1``. Weight ``(F, C, K, K)``, bias ``(F,)``.
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
``groupnorm``  ``{"groups": G}``
    Group normalization (Wu & He, ECCV 2018, arXiv:1803.08494) of ``(C, H, W)`` input:
    the ``C`` channels form ``G`` groups of ``C/G`` consecutive channels (``G`` must
    divide ``C``); each example's group is normalized by its own mean and (biased)
    variance over ``(C/G, H, W)`` with ``eps = 1e-5``, then scaled and shifted per
    channel: weight ``(C,)`` (initially 1) and bias ``(C,)`` (initially 0), PyTorch's
    ``GroupNorm``. Why not batch normalization: its statistics are those of a batch, so
    (a) federated clients with different data hold different running means and variances,
    which averaging weights does not reconcile (FedAvg of running statistics is not the
    statistics of the pooled data, and they are buffers, not trained weights), and (b) a
    model normalizes by batch statistics in training but by stored running ones when
    serving, so the served function differs from the trained one and depends on what else
    is in a micro-batch unless frozen. Group statistics belong to one example: the same
    function in training, serving, every client and every runtime, and its only state is
    the trained affine weights, which average like any other.
``upsample``  ``{"scale": S}``
    Nearest-neighbour upsampling of ``(C, H, W)`` to ``(C, S·H, S·W)``: output pixel
    ``(i, j)`` copies input ``(i // S, j // S)``. No weights.

Weights are named ``"{layer name}.weight"`` / ``"{layer name}.bias"``, where a layer's name
defaults to ``"{type}{index}"`` (e.g. ``"conv2d0.weight"``), and travel in these shapes.
The model's output is raw (logits); what it means and the loss it trains with belong to
the task (:mod:`fedge.tasks`): softmax cross-entropy for classification, a CenterNet map
for detection.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, StrictInt, ValidationError

from fedge.errors import ModelSpecError

if TYPE_CHECKING:  # torch loads when a model is built: reading a spec (serving) needs none
    import torch

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
    # StrictInt: JSON ``true`` must not pass for a padding of 1.
    padding: Literal["valid", "same"] | Annotated[StrictInt, Field(ge=0)] = "valid"

    def pad(self) -> int:
        """Zeros added on every side of the input."""
        if self.padding == "same":
            return (self.kernel_size - 1) // 2
        return 0 if self.padding == "valid" else int(self.padding)


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


class GroupNorm(_Layer):
    type: Literal["groupnorm"]
    groups: PositiveInt


class Upsample(_Layer):
    type: Literal["upsample"]
    scale: PositiveInt = 2


Layer = Annotated[
    Conv2d | MaxPool2d | Flatten | Dense | Activation | GroupNorm | Upsample,
    Field(discriminator="type"),
]


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
    if isinstance(layer, GroupNorm | Upsample):
        if len(shape) != 3:
            raise ModelSpecError(f"{where} needs (C, H, W) input, got shape {list(shape)}")
        c, h, w = shape
        if isinstance(layer, Upsample):
            return (c, h * layer.scale, w * layer.scale)
        if c % layer.groups:
            raise ModelSpecError(f"{where}: {layer.groups} groups do not divide {c} channels")
        return shape
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
            p = layer.pad()
            if p >= k:
                raise ModelSpecError(f"{where}: padding {p} must be smaller than kernel {k}")
            if k > h + 2 * p or k > w + 2 * p:
                raise ModelSpecError(
                    f"{where}: kernel {k} larger than input {h}x{w}"
                    + (f" padded by {p}" if p else "")
                )
            return (layer.filters, (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1)
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
    import torch

    if isinstance(layer, Conv2d):
        return torch.nn.Conv2d(
            in_shape[0], layer.filters, layer.kernel_size, layer.stride, layer.pad()
        )
    if isinstance(layer, GroupNorm):
        return torch.nn.GroupNorm(layer.groups, in_shape[0], eps=1e-5, affine=True)
    if isinstance(layer, Upsample):
        return torch.nn.Upsample(scale_factor=layer.scale, mode="nearest")
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
    import torch

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
    import torch

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
    ``centernet``
        A small CenterNet-style detector (Zhou et al., "Objects as Points", 2019,
        arXiv:1904.07850) for ``(C, H, W)`` input with ``H`` and ``W`` multiples of 8: one
        output map at stride 4, ``(num_classes + 4, H/4, W/4)``, whose channels are the
        class heatmap logits, box size and centre offset (see
        :class:`fedge.tasks.Detection`). Blocks of conv 3×3 (padding 1), GroupNorm, ReLU:
        16 at stride 2, 32 at stride 2, 32, 64 at stride 2, 64, 64; nearest upsampling ×2
        back to stride 4; 32; then a 1×1 conv to the output. Receptive field about 60
        pixels; ~125k weights (1×96×96 input, 10 classes: 24×24 output cells).
    """
    if name == "centernet":
        return _parse(_centernet(input_shape, num_classes), name)
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
        raise ModelSpecError(
            f"unknown model preset {name!r}: choose logreg, mlp, lenet or centernet"
        )
    layers.append({"type": "dense", "units": num_classes})
    return _parse({"name": name, "input_shape": list(input_shape), "layers": layers}, name)


def _centernet(input_shape: Sequence[int], num_classes: int) -> dict[str, Any]:
    if len(input_shape) != 3 or input_shape[1] % 8 or input_shape[2] % 8:
        raise ModelSpecError(
            f"the centernet preset needs (C, H, W) input with H and W multiples of 8, got "
            f"{list(input_shape)}"
        )
    layers: list[dict[str, Any]] = []

    def block(filters: int, stride: int = 1) -> None:
        layers.extend(
            [
                {"type": "conv2d", "filters": filters, "kernel_size": 3, "stride": stride,
                 "padding": 1},
                {"type": "groupnorm", "groups": min(8, filters // 4)},
                {"type": "relu"},
            ]
        )  # fmt: skip

    block(16, 2)
    block(32, 2)
    block(32)
    block(64, 2)
    block(64)
    block(64)
    layers.append({"type": "upsample", "scale": 2})
    block(32)
    layers.append({"type": "conv2d", "filters": num_classes + 4, "kernel_size": 1})
    return {"name": "centernet", "input_shape": list(input_shape), "layers": layers}
