import pytest
import torch

from fedge.errors import FedgeError
from fedge.fl.server_opt import ServerOptimizer
from fedge.fl.strategy import FedAvg, Strategy
from fedge.fl.types import ClientUpdate, ServerState, clone_params


def _update(k, n, w, b):
    return ClientUpdate(
        client=k,
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
    state = ServerState(params={"w": torch.zeros(2, 2), "b": torch.zeros(1)}, rounds_completed=4)
    new = FedAvg().aggregate(state, iter(updates))
    # Σ n_k w_k / Σ n_k by hand: (10*w0 + 30*w1 + 60*w2) / 100
    expected_w = torch.tensor([[1.6, 2.0], [3.0, 2.2]])
    expected_b = torch.tensor([(10 * 1.0 + 30 * -1.0 + 60 * 0.5) / 100])
    torch.testing.assert_close(new.params["w"], expected_w, rtol=0, atol=1e-6)
    torch.testing.assert_close(new.params["b"], expected_b, rtol=0, atol=1e-7)
    assert new.rounds_completed == 5
    assert new.params["w"].dtype == torch.float32


def _global():
    return ServerState(
        params={"w": torch.tensor([[1.0, -1.0], [0.5, 2.0]]), "b": torch.tensor([3.0])},
        rounds_completed=2,
    )


def test_deltas_are_taken_from_the_global_model_and_leave_the_inputs_unchanged():
    state = _global()
    updates = [
        _update(0, 1, [[2.0, 1.0], [0.5, 0.0]], 1.0),
        _update(1, 3, [[1.0, -3.0], [2.5, 2.0]], 7.0),
    ]
    before = [clone_params(state.params)] + [clone_params(u.params) for u in updates]
    # server lr 0.5, so the new model depends on the global one: w + 0.5·Σ n_k(w_k − w)/Σ n_k
    strategy = Strategy(server_optimizer=ServerOptimizer("sgd", lr=0.5))
    deltas = list(strategy.client_deltas(state, updates))
    new = strategy.aggregate(state, iter(updates))
    # Δ_0 = w_0 − w and Δ_1 = w_1 − w by hand
    assert [n for _, n in deltas] == [1.0, 3.0]
    assert deltas[0][0]["w"].tolist() == [[1.0, 2.0], [0.0, -2.0]]
    assert deltas[0][0]["b"].tolist() == [-2.0]
    assert deltas[1][0]["w"].tolist() == [[0.0, -2.0], [2.0, 0.0]]
    assert deltas[1][0]["b"].tolist() == [4.0]
    # mean Δ = (1·Δ_0 + 3·Δ_1)/4 = [[0.25, -1.0], [1.5, -0.5]], b: 2.5
    expected_w = torch.tensor([[1.125, -1.5], [1.25, 1.75]])
    torch.testing.assert_close(new.params["w"], expected_w, rtol=0, atol=1e-6)
    torch.testing.assert_close(new.params["b"], torch.tensor([4.25]), rtol=0, atol=1e-6)
    # neither the global model nor any client's weights were changed in place
    for params, was in zip([state.params] + [u.params for u in updates], before, strict=True):
        for k in was:
            assert torch.equal(params[k], was[k]), k


def test_one_update_is_returned_unchanged():
    state = _global()
    new = FedAvg().aggregate(state, [_update(0, 7, [[0.3, 0.1], [-0.2, 4.0]], -0.2)])
    torch.testing.assert_close(new.params["w"], torch.tensor([[0.3, 0.1], [-0.2, 4.0]]))
    assert new.params["b"].item() == pytest.approx(-0.2)
    assert state.params["b"].item() == 3.0


def test_no_update_is_an_error():
    with pytest.raises(FedgeError, match="no client update"):
        FedAvg().aggregate(ServerState(params={}), [])


def test_init_copies_the_initial_parameters():
    w = {"w": torch.ones(2)}
    state = FedAvg().init(w)
    w["w"].add_(1)
    assert torch.equal(state.params["w"], torch.ones(2))
    assert state.rounds_completed == 0
