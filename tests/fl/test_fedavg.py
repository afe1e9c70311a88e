import pytest
import torch

from fedge.errors import FedgeError
from fedge.fl.strategy import FedAvg
from fedge.fl.types import ClientUpdate, ServerState


def _update(k, n, w, b):
    return ClientUpdate(
        client_id=k,
        params={"w": torch.tensor(w), "b": torch.tensor([b])},
        num_samples=n,
        num_steps=1,
    )


def test_aggregate_is_the_sample_weighted_mean():
    updates = [
        _update(0, 10, [[1.0, 2.0], [3.0, 4.0]], 1.0),
        _update(1, 30, [[5.0, 6.0], [7.0, 8.0]], -1.0),
        _update(2, 60, [[0.0, 0.0], [1.0, -1.0]], 0.5),
    ]
    state = ServerState(params={"w": torch.zeros(2, 2), "b": torch.zeros(1)}, round=4)
    new = FedAvg().aggregate(state, iter(updates))
    # Σ n_k w_k / Σ n_k by hand: (10*w0 + 30*w1 + 60*w2) / 100
    expected_w = torch.tensor([[1.6, 2.0], [3.0, 2.2]])
    expected_b = torch.tensor([(10 * 1.0 + 30 * -1.0 + 60 * 0.5) / 100])
    torch.testing.assert_close(new.params["w"], expected_w, rtol=0, atol=1e-6)
    torch.testing.assert_close(new.params["b"], expected_b, rtol=0, atol=1e-7)
    assert new.round == 5
    assert new.params["w"].dtype == torch.float32


def test_aggregate_does_not_modify_client_updates():
    updates = [_update(0, 1, [[1.0]], 2.0), _update(1, 3, [[5.0]], 6.0)]
    FedAvg().aggregate(ServerState(params={}), updates)
    assert updates[0].params["w"].item() == 1.0
    assert updates[1].params["b"].item() == 6.0


def test_one_update_is_returned_unchanged():
    state = ServerState(params={"w": torch.zeros(1, 1), "b": torch.zeros(1)})
    new = FedAvg().aggregate(state, [_update(0, 7, [[0.3]], -0.2)])
    assert new.params["w"].item() == pytest.approx(0.3)
    assert new.params["b"].item() == pytest.approx(-0.2)


def test_no_update_is_an_error():
    with pytest.raises(FedgeError, match="no client update"):
        FedAvg().aggregate(ServerState(params={}), [])


def test_init_copies_the_initial_parameters():
    w = {"w": torch.ones(2)}
    state = FedAvg().init(w)
    w["w"].add_(1)
    assert torch.equal(state.params["w"], torch.ones(2))
    assert state.round == 0
