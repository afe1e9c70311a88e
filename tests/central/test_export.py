"""ONNX export: onnxruntime must compute what PyTorch computes, for any batch size."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from fedge.central.export import OPSET, export_bundle, export_onnx, verify_onnx
from fedge.central.publish import publish_model
from fedge.central.registry import ModelRegistry
from fedge.central.storage import LocalStore
from fedge.central.weights import params_from_bytes
from fedge.errors import ExportError, ModelSpecError
from fedge.models.spec import build_model, load_spec, preset_spec

LENET = preset_spec("lenet", (1, 28, 28), 10)
MLP = preset_spec("mlp", (1, 28, 28), 10)


def _trained_like(spec, seed, scale=0.1):
    """Initial weights plus noise, so that every unit and class responds differently."""
    generator = torch.Generator().manual_seed(seed)
    return {
        name: t + scale * torch.randn(t.shape, generator=generator)
        for name, t in build_model(spec, seed=seed).state_dict().items()
    }


@pytest.mark.parametrize("spec", [LENET, MLP], ids=["lenet", "mlp"])
def test_onnxruntime_matches_pytorch(spec):
    params = _trained_like(spec, seed=1)
    data = export_onnx(spec, params)
    model = build_model(spec)
    model.load_state_dict(params)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(5)
    for batch in (1, 2, 16):
        x = torch.rand(batch, *spec.input_shape, generator=generator)
        (got,) = session.run(["logits"], {"input": x.numpy()})
        expected = model.eval()(x).detach().numpy()
        assert got.shape == (batch, 10)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


def test_large_logits_are_judged_by_float32_precision():
    params = {name: 5 * t for name, t in _trained_like(LENET, seed=4).items()}
    model = build_model(LENET)
    model.load_state_dict(params)
    model.eval()
    assert model(torch.randn(7, *LENET.input_shape)).abs().max() > 1e3
    difference = verify_onnx(export_onnx(LENET, params, verify=False), model, LENET)
    assert difference > 1e-4  # a correct export that a fixed 1e-4 bound would refuse


@pytest.fixture(scope="module")
def mlp_onnx():
    """The MLP with weights of seed 1, exported without the check."""
    return export_onnx(MLP, _trained_like(MLP, seed=1), verify=False)


def test_graph_has_a_dynamic_batch_axis_and_named_weights(mlp_onnx):
    graph = onnx.load_from_string(mlp_onnx)
    assert graph.opset_import[0].version == OPSET
    (inp,) = graph.graph.input
    dims = inp.type.tensor_type.shape.dim
    assert (
        inp.name == "input" and dims[0].dim_param and [d.dim_value for d in dims[1:]] == [1, 28, 28]
    )
    assert {"dense1.weight", "dense1.bias", "dense5.weight"} <= {
        t.name for t in graph.graph.initializer
    }


def test_a_disagreeing_onnx_model_is_rejected(mlp_onnx):
    model_b = build_model(MLP)
    model_b.load_state_dict(_trained_like(MLP, seed=2))
    with pytest.raises(ExportError, match=r"disagrees with PyTorch: max"):
        verify_onnx(mlp_onnx, model_b.eval(), MLP)


def test_unrunnable_onnx_is_an_export_error():
    with pytest.raises(ExportError, match=r"onnxruntime cannot run"):
        verify_onnx(b"not onnx", build_model(MLP).eval(), MLP)


def test_weights_that_do_not_fit_are_refused_before_export():
    params = build_model(MLP).state_dict()
    params["dense1.weight"] = params["dense1.weight"][:, :10]
    with pytest.raises(ModelSpecError, match=r"dense1.weight has shape \[200, 10\]"):
        export_onnx(MLP, params)
    del params["dense1.weight"]
    with pytest.raises(ModelSpecError, match=r"missing \['dense1.weight'\]"):
        export_onnx(MLP, params)


def test_bundle_holds_onnx_weights_and_spec():
    params = _trained_like(LENET, seed=3)
    bundle = export_bundle(LENET, params)
    assert sorted(bundle) == ["model.json", "model.onnx", "model.safetensors"]
    assert load_spec(json.loads(bundle["model.json"])) == LENET
    restored = params_from_bytes(bundle["model.safetensors"])
    assert all(torch.equal(restored[k], v) for k, v in params.items())
    onnx.checker.check_model(onnx.load_from_string(bundle["model.onnx"]))


def test_failed_check_registers_nothing(tmp_path):
    registry = ModelRegistry(LocalStore(tmp_path))
    with pytest.raises(ExportError, match=r"disagrees"):
        # a tolerance below zero cannot be met: the check fails after a real export
        publish_model(registry, "clf", MLP, build_model(MLP).state_dict(), atol=-1.0)
    assert registry.list_models() == []
    assert registry.store.list() == []
