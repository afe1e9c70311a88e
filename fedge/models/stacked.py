"""K copies of a spec'd model evaluated at once, each with its own weights.

Weights carry a leading client axis (``conv2d0.weight`` of shape ``(K, F, C, k, k)``).
Convolutions run as one grouped convolution (``groups=K``) over the clients' channels
side by side, dense layers as one batched matrix product; one autograd pass then gives
every client's gradient. This is the same function as :func:`fedge.models.spec.build_model`
applied to each client separately, only faster on a CPU than ``torch.func.vmap``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from fedge.errors import ModelSpecError
from fedge.models.spec import (
    Activation,
    Conv2d,
    Dense,
    Flatten,
    GroupNorm,
    MaxPool2d,
    ModelSpec,
    Upsample,
)

__all__ = ["stacked_forward"]

_ACTIVATIONS = {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid}


def stacked_forward(
    spec: ModelSpec, params: Mapping[str, torch.Tensor], x: torch.Tensor
) -> torch.Tensor:
    """Outputs ``(K, B, *output_shape)`` of ``K`` models on their own inputs ``x``
    ``(K, B, ...)``: logits ``(K, B, classes)`` for a classifier, maps ``(K, B, C, H, W)``
    for a spec that ends on an image layer (a detector).

    Image activations travel as ``(B, K·C, H, W)`` (clients' channels side by side), flat
    ones as ``(K, B, D)``.
    """
    k, b = x.shape[0], x.shape[1]
    image = len(spec.input_shape) == 3
    if image:
        # Channels-last: oneDNN's grouped convolutions and pooling are several times
        # faster in this layout than in NCHW on a CPU (LeNet, K=50, B=10: 2x per step).
        h = x.transpose(0, 1).reshape(b, k * x.shape[2], *x.shape[3:])
        h = h.contiguous(memory_format=torch.channels_last)
    else:
        h = x
    layers = list(zip(spec.layer_names(), spec.layers, strict=True))
    i = 0
    while i < len(layers):
        name, layer = layers[i]
        i += 1
        if isinstance(layer, Conv2d):
            w = params[f"{name}.weight"]
            h = F.conv2d(
                h,
                w.reshape(-1, *w.shape[2:]),
                params[f"{name}.bias"].reshape(-1),
                stride=layer.stride,
                padding=layer.pad(),
                groups=k,
            )
        elif isinstance(layer, GroupNorm):
            # Each client's C channels are consecutive, so its G groups are K·G groups of
            # the side-by-side channels: one call normalizes every client on its own.
            h = F.group_norm(
                h,
                k * layer.groups,
                params[f"{name}.weight"].reshape(-1),
                params[f"{name}.bias"].reshape(-1),
                eps=1e-5,
            )
        elif isinstance(layer, Upsample):
            h = F.interpolate(h, scale_factor=layer.scale, mode="nearest")
        elif isinstance(layer, MaxPool2d):
            h = _pool(h, layer)
        elif isinstance(layer, Flatten):
            if image:
                h = h.reshape(b, k, -1).transpose(0, 1)
                image = False
            else:
                h = h.reshape(k, b, -1)
        elif isinstance(layer, Dense):
            w = params[f"{name}.weight"].transpose(1, 2)
            if layer.bias:
                h = torch.baddbmm(params[f"{name}.bias"].unsqueeze(1), h, w)
            else:
                h = torch.bmm(h, w)
        elif isinstance(layer, Activation):
            if i < len(layers) and isinstance(layers[i][1], MaxPool2d):
                # f(maxpool(h)) = maxpool(f(h)) in values and gradients, as every
                # activation here is monotone (max picks the same element; where relu
                # ties at 0 its gradient is 0 either way): pooling first applies the
                # activation to fewer elements (a quarter, for 2x2 pooling).
                h = _ACTIVATIONS[layer.type](_pool(h, layers[i][1]))
                i += 1
            else:
                h = _ACTIVATIONS[layer.type](h)
        else:  # a layer type added to the spec must be taught to this function too
            raise ModelSpecError(f"the vectorized engine cannot stack a {layer.type} layer")
    if image:
        return h.reshape(b, k, -1, *h.shape[2:]).transpose(0, 1)
    return h


def _pool(h: torch.Tensor, layer: MaxPool2d) -> torch.Tensor:
    return F.max_pool2d(h, layer.pool_size, layer.stride or layer.pool_size)
