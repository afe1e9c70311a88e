import pytest
import torch

from fedge.models.spec import build_model, load_spec, preset_spec
from fedge.models.stacked import stacked_forward

SPECS = [
    preset_spec("lenet", (1, 28, 28), 10),
    preset_spec("mlp", (1, 8, 8), 10, hidden=[16, 8]),
    preset_spec("logreg", (60,), 10),
    load_spec(
        {
            "input_shape": [3, 9, 9],
            "layers": [
                {"type": "conv2d", "filters": 4, "kernel_size": 3, "padding": "same"},
                {"type": "tanh"},
                {"type": "conv2d", "filters": 2, "kernel_size": 3, "stride": 2},
                {"type": "sigmoid"},
                {"type": "maxpool2d", "pool_size": 2},
                {"type": "flatten"},
                {"type": "dense", "units": 5, "bias": False},
            ],
        }
    ),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name + str(s.input_shape))
def test_stacked_forward_equals_each_model_on_its_own(spec):
    models = [build_model(spec, seed=s) for s in range(3)]
    stacked = {
        name: torch.stack([dict(m.named_parameters())[name].detach() for m in models])
        for name, _ in models[0].named_parameters()
    }
    x = torch.randn(3, 4, *spec.input_shape)
    out = stacked_forward(spec, stacked, x)
    assert out.shape == (3, 4, spec.output_shapes()[-1][0])
    for k, model in enumerate(models):
        torch.testing.assert_close(out[k], model(x[k]), rtol=1e-5, atol=1e-5)
