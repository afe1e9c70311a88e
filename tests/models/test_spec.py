import json

import pytest
import torch

from fedge.errors import ModelSpecError
from fedge.fl.local import get_params
from fedge.models.spec import build_model, count_parameters, fast_layout, load_spec, preset_spec


@pytest.mark.parametrize(
    ("preset", "expected"),
    [
        # 784*10 + 10
        ("logreg", 7_850),
        # 784*200+200 + 200*200+200 + 200*10+10 (McMahan's 2NN)
        ("mlp", 199_210),
        # conv 1*6*25+6, conv 6*16*25+16, dense 256*120+120, 120*84+84, 84*10+10
        ("lenet", 156 + 2_416 + 30_840 + 10_164 + 850),
    ],
)
def test_presets_have_the_published_parameter_counts(preset, expected):
    model = build_model(preset_spec(preset, (1, 28, 28), 10))
    assert count_parameters(model) == expected
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


def test_lenet_flattens_sixteen_4x4_maps():
    spec = preset_spec("lenet", (1, 28, 28), 10)
    shapes = spec.output_shapes()
    assert shapes[5] == (16, 4, 4)
    assert shapes[6] == (256,)


def test_parameter_names_follow_layer_types_and_indices():
    model = build_model(preset_spec("lenet", (1, 28, 28), 10))
    names = [name for name, _ in model.named_parameters()]
    assert names[:2] == ["conv2d0.weight", "conv2d0.bias"]
    assert names[-1] == "dense11.bias"


def test_flatten_is_channel_major():
    spec = load_spec(
        {"input_shape": [2, 2, 2], "layers": [{"type": "flatten"}, {"type": "dense", "units": 1}]}
    )
    model = build_model(spec)
    x = torch.arange(8.0).reshape(1, 2, 2, 2)
    assert torch.equal(model[0](x)[0], torch.tensor([0.0, 1, 2, 3, 4, 5, 6, 7]))


def test_same_padding_keeps_spatial_size():
    spec = load_spec(
        {
            "input_shape": [1, 9, 9],
            "layers": [{"type": "conv2d", "filters": 4, "kernel_size": 3, "padding": "same"}],
        }
    )
    assert spec.output_shapes() == [(4, 9, 9)]
    assert build_model(spec)(torch.zeros(1, 1, 9, 9)).shape == (1, 4, 9, 9)


def test_initial_weights_depend_only_on_seed():
    spec = preset_spec("lenet", (1, 28, 28), 10)
    torch.manual_seed(123)
    before = torch.rand(1)
    a = build_model(spec, seed=1).state_dict()
    b = build_model(spec, seed=1).state_dict()
    c = build_model(spec, seed=2).state_dict()
    torch.manual_seed(123)
    assert torch.equal(torch.rand(1), before), "global RNG must be untouched"
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["conv2d0.weight"], c["conv2d0.weight"])


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        ([{"type": "dense", "units": 3}], "add a flatten layer"),
        ([{"type": "conv2d", "filters": 2, "kernel_size": 4, "padding": "same"}], "odd kernel"),
        ([{"type": "conv2d", "filters": 2, "kernel_size": 9}], "larger than input"),
        ([{"type": "softmax"}], "layers.0"),
        ([{"type": "dense", "units": 0}], "units"),
        ([{"type": "flatten", "bogus": 1}], "bogus"),
        ([], "layers"),
    ],
)
def test_invalid_specs_name_the_problem(layers, message):
    with pytest.raises(ModelSpecError, match=message):
        load_spec({"input_shape": [1, 8, 8], "layers": layers})


def test_spec_round_trips_through_a_json_file(tmp_path):
    spec = preset_spec("mlp", (1, 8, 8), 10, hidden=[32])
    path = tmp_path / "spec.json"
    path.write_text(spec.model_dump_json())
    assert load_spec(path) == spec


def test_unreadable_spec_files_raise_model_spec_error(tmp_path):
    with pytest.raises(ModelSpecError, match="not found"):
        load_spec(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ModelSpecError, match="not valid JSON"):
        load_spec(bad)
    dup = tmp_path / "dup.json"
    layers = [{"type": "flatten", "name": "x"}, {"type": "dense", "units": 2, "name": "x"}]
    dup.write_text(json.dumps({"input_shape": [4], "layers": layers}))
    with pytest.raises(ModelSpecError, match="unique"):
        load_spec(dup)


def test_unknown_preset_is_rejected():
    with pytest.raises(ModelSpecError, match="unknown model preset"):
        preset_spec("resnet", (1, 28, 28), 10)


def test_fast_layout_keeps_the_function_and_get_params_gives_contiguous_tensors():
    spec = preset_spec("lenet", (1, 28, 28), 10)
    reference, fast = build_model(spec, seed=3), fast_layout(build_model(spec, seed=3))
    assert fast.get_parameter("conv2d0.weight").is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), reference(x), rtol=1e-5, atol=1e-5)
    params = get_params(fast)
    assert all(p.is_contiguous() for p in params.values())
    for name, p in reference.named_parameters():
        torch.testing.assert_close(params[name], p.detach(), rtol=0, atol=0)
    mlp = preset_spec("mlp", (1, 8, 8), 10)
    assert fast_layout(build_model(mlp)).get_parameter("dense1.weight").is_contiguous()
