"""Model weights as bytes: safetensors encoding and the check that they fit a spec."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from fedge.errors import ModelSpecError
from fedge.models.spec import ModelSpec, build_model

__all__ = ["check_params", "load_model", "params_from_bytes", "params_to_bytes"]


def params_to_bytes(params: Mapping[str, torch.Tensor]) -> bytes:
    """Encode named tensors as a safetensors file."""
    return save({name: t.detach().contiguous() for name, t in params.items()})


def params_from_bytes(data: bytes) -> dict[str, torch.Tensor]:
    """Decode a safetensors file into named tensors."""
    try:
        return load(data)
    except (SafetensorError, ValueError) as exc:
        raise ModelSpecError(f"weights are not a valid safetensors file: {exc}") from None


def check_params(spec: ModelSpec, params: Mapping[str, torch.Tensor]) -> None:
    """Raise :class:`ModelSpecError` unless ``params`` has exactly the spec's weight names,
    with the spec's shapes, as floating-point tensors."""
    expected = {name: tuple(t.shape) for name, t in build_model(spec).state_dict().items()}
    missing = sorted(expected.keys() - params.keys())
    unexpected = sorted(params.keys() - expected.keys())
    if missing or unexpected:
        raise ModelSpecError(
            f"weights do not fit model spec {spec.name!r}: "
            f"missing {missing or 'none'}, unexpected {unexpected or 'none'}"
        )
    for name, shape in expected.items():
        tensor = params[name]
        if tuple(tensor.shape) != shape:
            raise ModelSpecError(
                f"weight {name} has shape {list(tensor.shape)}, spec {spec.name!r} needs "
                f"{list(shape)}"
            )
        if not tensor.is_floating_point():
            raise ModelSpecError(f"weight {name} must be floating point, got {tensor.dtype}")


def load_model(spec: ModelSpec, params: Mapping[str, torch.Tensor]) -> torch.nn.Sequential:
    """``spec`` built as a float32 module holding ``params``, in evaluation mode."""
    check_params(spec, params)
    model = build_model(spec)
    model.load_state_dict({name: t.to(torch.float32) for name, t in params.items()})
    return model.eval()
