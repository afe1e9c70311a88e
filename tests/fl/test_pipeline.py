import pytest
import torch

from fedge.errors import UpdateRejected
from fedge.fl.pipeline import check_update
from fedge.fl.types import ClientUpdate

REF = {"w": torch.zeros(2, 3), "b": torch.zeros(3)}


def _update(**params):
    full = {"w": torch.ones(2, 3), "b": torch.ones(3)} | params
    return ClientUpdate(client=4, params=full, num_samples=5, num_steps=1)


def test_a_well_formed_update_passes():
    update = _update()
    assert check_update(update, REF) is update


@pytest.mark.parametrize(
    ("update", "message"),
    [
        (_update(w=torch.ones(3, 2)), r"w has shape \[3, 2\], expected \[2, 3\]"),
        (_update(b=torch.tensor([1.0, float("nan"), 0.0])), "b holds NaN or Inf"),
        (_update(w=torch.full((2, 3), float("inf"))), "w holds NaN or Inf"),
        (_update(b=torch.ones(3, dtype=torch.float64)), "dtype"),
        (_update(extra=torch.ones(1)), r"unexpected \['extra'\]"),
        (
            ClientUpdate(client=4, params={"w": torch.ones(2, 3)}, num_samples=5, num_steps=1),
            r"missing \['b'\]",
        ),
        (
            ClientUpdate(client=4, params=_update().params, num_samples=0, num_steps=1),
            "num_samples",
        ),
    ],
)
def test_malformed_updates_are_rejected_with_a_reason(update, message):
    with pytest.raises(UpdateRejected, match=message) as info:
        check_update(update, REF)
    assert "client 4" in str(info.value)
