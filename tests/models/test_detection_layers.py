"""The layers a detector needs: explicit conv padding, GroupNorm, nearest upsampling, and
the centernet preset; existing specs must build exactly what they built before."""

import hashlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from fedge.central.export import export_onnx
from fedge.central.weights import params_to_bytes
from fedge.errors import ModelSpecError
from fedge.models.spec import build_model, count_parameters, load_spec, preset_spec
from fedge.models.stacked import stacked_forward

# sha256 of the safetensors bytes of build_model(preset, seed=3) and of the spec's JSON,
# computed with the spec module before these layers were added.
GOLDEN = {
    "logreg": (
        "2751b451170b0101f12f03feecc75a67d2f0d0e2c86709f77e709ea8d24323c1",
        "a6073b59be91170d6fe7b2980059ee324b05718e09c4fa2e43fa83044af66575",
    ),
    "mlp": (
        "282c2955b78aed3390ce1dcb651df64de0ed9f8dde7d870fcc52ef6ac737846a",
        "2747a20351a22d63be1b6f80815571cb4e60c7a06037e31d9f3756168148ec30",
    ),
    "lenet": (
        "c49be04c10b15cb264bc2a211123592b8ad55f7014af2d951ca3510664a42623",
        "e0e91dcb91d220c2adb3379c9f5af5ce2aa5f78488443ecbba73aaff3dd4efa0",
    ),
}

# One layer of each new kind, small enough to export in a few seconds.
TINY = {
    "name": "tiny-detector",
    "input_shape": [3, 16, 16],
    "layers": [
        {"type": "conv2d", "filters": 8, "kernel_size": 3, "stride": 2, "padding": 1},
        {"type": "groupnorm", "groups": 2},
        {"type": "relu"},
        {"type": "conv2d", "filters": 8, "kernel_size": 3, "stride": 2, "padding": 1},
        {"type": "groupnorm", "groups": 4},
        {"type": "relu"},
        {"type": "upsample", "scale": 2},
        {"type": "conv2d", "filters": 6, "kernel_size": 1},
    ],
}


def _spec(layers, input_shape=(2, 4, 4)):
    return load_spec({"input_shape": list(input_shape), "layers": layers})


def _trained_like(spec, seed):
    generator = torch.Generator().manual_seed(seed)
    return {
        name: t + 0.3 * torch.randn(t.shape, generator=generator)
        for name, t in build_model(spec, seed=seed).state_dict().items()
    }


@pytest.mark.parametrize("preset", sorted(GOLDEN))
def test_existing_presets_build_byte_identical_weights_and_json(preset):
    spec = preset_spec(preset, (1, 28, 28), 10)
    weights = params_to_bytes(build_model(spec, seed=3).state_dict())
    assert hashlib.sha256(weights).hexdigest() == GOLDEN[preset][0]
    assert hashlib.sha256(spec.model_dump_json().encode()).hexdigest() == GOLDEN[preset][1]


def test_integer_padding_with_stride_two_halves_an_even_input():
    spec = _spec(
        [{"type": "conv2d", "filters": 3, "kernel_size": 3, "stride": 2, "padding": 1}],
        (2, 96, 96),
    )
    assert spec.output_shapes() == [(3, 48, 48)]
    model = build_model(spec, seed=1)
    x = torch.randn(2, 2, 96, 96)
    expected = F.conv2d(x, model[0].weight, model[0].bias, stride=2, padding=1)
    torch.testing.assert_close(model(x), expected, rtol=0, atol=0)
    # padding 0 is "valid"; odd sizes round down: (7 + 2 - 3) // 2 + 1 = 4
    assert _spec([{"type": "conv2d", "filters": 1, "kernel_size": 3, "padding": 0}], (1, 5, 5)
                 ).output_shapes() == [(1, 3, 3)]  # fmt: skip
    odd = _spec(
        [{"type": "conv2d", "filters": 1, "kernel_size": 3, "stride": 2, "padding": 1}], (1, 7, 7)
    )
    assert odd.output_shapes() == [(1, 4, 4)]


def test_groupnorm_normalizes_each_group_of_each_example():
    spec = _spec([{"type": "groupnorm", "groups": 2}], (4, 3, 3))
    model = build_model(spec)
    names = {name: tuple(p.shape) for name, p in model.named_parameters()}
    assert names == {"groupnorm0.weight": (4,), "groupnorm0.bias": (4,)}
    assert torch.equal(model[0].weight, torch.ones(4))
    assert torch.equal(model[0].bias, torch.zeros(4))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
        model[0].bias.copy_(torch.tensor([0.5, 0.0, -1.0, 0.0]))
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64).float()
    expected = torch.empty_like(x)
    for b in range(2):
        for g in range(2):
            block = x[b, 2 * g : 2 * g + 2].double()
            mean, var = block.mean(), block.var(unbiased=False)
            expected[b, 2 * g : 2 * g + 2] = ((block - mean) / torch.sqrt(var + 1e-5)).float()
    expected = expected * model[0].weight.view(1, 4, 1, 1) + model[0].bias.view(1, 4, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
        # one example's output does not depend on the rest of the batch
        torch.testing.assert_close(model(x[:1]), model(x)[:1], rtol=0, atol=0)


def test_upsample_copies_each_pixel_into_a_scale_by_scale_block():
    spec = _spec([{"type": "upsample", "scale": 3}], (1, 2, 2))
    assert spec.output_shapes() == [(1, 6, 6)]
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    expected = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(2, 2).repeat_interleave(3, 0)
    expected = expected.repeat_interleave(3, 1)
    assert torch.equal(build_model(spec)(x)[0, 0], expected)
    assert count_parameters(build_model(spec)) == 0


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        ([{"type": "groupnorm", "groups": 3}], "3 groups do not divide 2 channels"),
        ([{"type": "groupnorm", "groups": 0}], "groups"),
        ([{"type": "flatten"}, {"type": "groupnorm", "groups": 1}], r"needs \(C, H, W\)"),
        ([{"type": "flatten"}, {"type": "upsample"}], r"needs \(C, H, W\)"),
        ([{"type": "upsample", "scale": 0}], "scale"),
        ([{"type": "conv2d", "filters": 1, "kernel_size": 3, "padding": 3}], "smaller than kernel"),
        ([{"type": "conv2d", "filters": 1, "kernel_size": 3, "padding": -1}], "padding"),
        ([{"type": "conv2d", "filters": 1, "kernel_size": 3, "padding": True}], "padding"),
        ([{"type": "conv2d", "filters": 1, "kernel_size": 3, "padding": "1"}], "padding"),
        ([{"type": "conv2d", "filters": 1, "kernel_size": 7, "padding": 1}], "larger than input"),
    ],
)
def test_invalid_detection_layers_name_the_problem(layers, message):
    with pytest.raises(ModelSpecError, match=message):
        _spec(layers)


def test_centernet_preset_maps_96px_images_to_a_stride_4_map():
    spec = preset_spec("centernet", (1, 96, 96), 10)
    assert spec.output_shapes()[-1] == (14, 24, 24)
    model = build_model(spec)
    assert model(torch.zeros(2, 1, 96, 96)).shape == (2, 14, 24, 24)
    assert count_parameters(model) == 125_934
    names = [name for name, _ in model.named_parameters()]
    assert names[:4] == ["conv2d0.weight", "conv2d0.bias", "groupnorm1.weight", "groupnorm1.bias"]
    assert {layer.type for layer in spec.layers} == {"conv2d", "groupnorm", "relu", "upsample"}
    assert preset_spec("centernet", (3, 64, 128), 2).output_shapes()[-1] == (6, 16, 32)
    with pytest.raises(ModelSpecError, match="multiples of 8"):
        preset_spec("centernet", (1, 28, 28), 10)


def test_stacked_forward_runs_the_detection_layers_client_by_client():
    spec = load_spec(TINY)
    models = [build_model(spec, seed=s) for s in range(3)]
    for k, model in enumerate(models):  # affine weights away from their 1/0 start
        model.load_state_dict(_trained_like(spec, seed=k))
    stacked = {
        name: torch.stack([m.state_dict()[name] for m in models]) for name in models[0].state_dict()
    }
    x = torch.randn(3, 4, *spec.input_shape)
    out = stacked_forward(spec, stacked, x)
    assert out.shape == (3, 4, 6, 8, 8)
    for k, model in enumerate(models):
        with torch.no_grad():
            torch.testing.assert_close(out[k], model(x[k]), rtol=1e-5, atol=1e-5)


def test_onnx_export_of_the_detection_layers_matches_pytorch():
    spec = load_spec(TINY)
    params = _trained_like(spec, seed=1)
    data = export_onnx(spec, params, atol=1e-5, rtol=0)
    model = build_model(spec)
    model.load_state_dict(params)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    x = torch.rand(5, *spec.input_shape, generator=torch.Generator().manual_seed(2))
    (got,) = session.run(["logits"], {"input": x.numpy()})
    with torch.no_grad():
        expected = model.eval()(x).numpy()
    assert got.shape == (5, 6, 8, 8)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    ops = {node.op_type for node in onnx.load_from_string(data).graph.node}
    assert "Resize" in ops  # nearest upsampling stays one op
    assert {"conv2d0.weight", "conv2d7.bias"} <= {
        t.name for t in onnx.load_from_string(data).graph.initializer
    }
