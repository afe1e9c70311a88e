import pytest
import torch

from fedge.fl.local import LocalTraining, client_generator, get_params, train_client
from fedge.fl.server_opt import ServerOptimizer
from fedge.fl.strategy import FedAvg, FedAvgM, FedNova, FedProx, Scaffold, Strategy
from fedge.fl.strategy.fednova import local_step_norm
from fedge.fl.types import ClientTask, ClientUpdate, ServerState
from fedge.models.spec import build_model, preset_spec

SPEC = preset_spec("mlp", (1, 4, 4), 3, hidden=[6])


@pytest.fixture
def clients():
    gen = torch.Generator().manual_seed(0)
    data = []
    for n in (13, 20, 7):
        x = torch.randn(n, 1, 4, 4, generator=gen)
        data.append((x, torch.randint(0, 3, (n,), generator=gen)))
    return data


def _round(strategy, state, clients, local, states=None, max_steps=None):
    task = strategy.client_task(state)
    updates = []
    for k, (x, y) in enumerate(clients):
        own = (
            task
            if states is None
            else ClientTask(task.round, task.params, task.extras, states.get(k))
        )
        budget = None if max_steps is None else max_steps[k]
        updates.append(
            train_client(
                build_model(SPEC),
                strategy,
                own,
                x,
                y,
                local,
                client_generator(0, task.round, k),
                client_index=k,
                max_steps=budget,
            )
        )
    return strategy.aggregate(state, iter(updates)), updates


def _same(a, b, atol=0.0):
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=atol)


LOCAL = LocalTraining(epochs=2, batch_size=5, lr=0.1, momentum=0.0)


def test_fedavg_is_server_sgd_with_lr_one_and_no_momentum(clients):
    w0 = get_params(build_model(SPEC))
    avg, _ = _round(FedAvg(), FedAvg().init(w0), clients, LOCAL)
    for strategy in (
        FedAvgM(server_lr=1.0, server_momentum=0.0),
        Strategy(server_optimizer=ServerOptimizer("sgd", lr=1.0)),
    ):
        other, _ = _round(strategy, strategy.init(w0), clients, LOCAL)
        _same(avg.params, other.params)


def test_fedavgm_differs_from_fedavg_from_the_second_round(clients):
    w0 = get_params(build_model(SPEC))
    a, m = FedAvg(), FedAvgM(server_lr=1.0, server_momentum=0.9)
    sa, sm = a.init(w0), m.init(w0)
    sa, _ = _round(a, sa, clients, LOCAL)
    sm, _ = _round(m, sm, clients, LOCAL)
    _same(sa.params, sm.params)  # v = Δ in round 1
    sa, _ = _round(a, sa, clients, LOCAL)
    sm, _ = _round(m, sm, clients, LOCAL)
    assert not torch.allclose(sa.params["dense3.weight"], sm.params["dense3.weight"])


def test_scaffold_with_zero_control_variates_is_fedavg(clients):
    w0 = get_params(build_model(SPEC))
    avg, _ = _round(FedAvg(), FedAvg().init(w0), clients, LOCAL)
    s = Scaffold(num_clients=3)
    sc, _ = _round(s, s.init(w0), clients, LOCAL)
    _same(avg.params, sc.params)


def test_scaffold_control_variates_by_hand(clients):
    w0 = get_params(build_model(SPEC))
    s = Scaffold(num_clients=5)
    state = s.init(w0)
    local = LocalTraining(epochs=1, batch_size=None, lr=0.1)  # K = 1 step each
    new, updates = _round(s, state, clients, local)
    for u in updates:
        # c_i⁺ = c_i − c + (x − y)/(Kη) with c = c_i = 0 and K = 1
        expected = {k: (w0[k] - u.params[k]) / 0.1 for k in w0}
        _same(u.client_state["c"], expected, atol=1e-5)
        _same(u.extras["delta_c"], expected, atol=1e-5)
    # c ← c + Σ Δc_i / N with N = 5 clients in the federation
    total = {k: sum(u.extras["delta_c"][k] for u in updates) / 5 for k in w0}
    _same(new.extras["c"], total, atol=1e-6)


def test_scaffold_corrects_each_step_by_c_minus_c_i(clients):
    s = Scaffold(num_clients=3)
    c = {"w": torch.tensor([1.0, 2.0])}
    c_i = {"w": torch.tensor([0.5, -1.0])}
    task = ClientTask(2, {"w": torch.zeros(2)}, {"c": c}, {"c": c_i})
    assert s.step_correction({"w": torch.ones(2)}, task)["w"].tolist() == [0.5, 3.0]
    first = ClientTask(2, {"w": torch.zeros(2)}, {"c": c}, None)
    assert s.step_correction({"w": torch.ones(2)}, first)["w"].tolist() == [1.0, 2.0]
    assert s.grad_correction({"w": torch.ones(2)}, task) is None


def test_fedprox_correction_is_the_gradient_of_the_proximal_term():
    w = {"a": torch.randn(3, 2, requires_grad=True), "b": torch.randn(2, requires_grad=True)}
    g = {k: torch.randn_like(v) for k, v in w.items()}
    mu = 0.3
    prox = mu / 2 * sum(((w[k] - g[k]) ** 2).sum() for k in w)
    grads = torch.autograd.grad(prox, list(w.values()))
    corr = FedProx(mu=mu).grad_correction(w, ClientTask(1, g))
    for (k, _), grad in zip(w.items(), grads, strict=True):
        torch.testing.assert_close(corr[k], grad)


def test_fedprox_keeps_clients_closer_to_the_global_model(clients):
    w0 = get_params(build_model(SPEC))
    x, y = clients[1]
    local = LocalTraining(epochs=5, batch_size=5, lr=0.2)

    def dist(strategy):
        u = train_client(
            build_model(SPEC), strategy, ClientTask(1, w0), x, y, local, client_generator(0, 1, 1)
        )
        return sum(float((u.params[k] - w0[k]).norm() ** 2) for k in w0)

    assert dist(FedProx(mu=1.0)) < dist(FedProx(mu=0.0)) == pytest.approx(dist(FedAvg()))


def test_fednova_with_equal_local_steps_is_fedavg(clients):
    w0 = get_params(build_model(SPEC))
    avg, _ = _round(FedAvg(), FedAvg().init(w0), clients, LOCAL, max_steps=[4, 4, 4])
    nova = FedNova(momentum=0.0)
    nv, _ = _round(nova, nova.init(w0), clients, LOCAL, max_steps=[4, 4, 4])
    _same(avg.params, nv.params, atol=1e-6)


def test_fednova_normalizes_unequal_local_steps_by_hand():
    x = {"w": torch.zeros(2)}
    ups = [
        ClientUpdate(0, {"w": torch.tensor([1.0, 0.0])}, num_samples=30, num_steps=1),
        ClientUpdate(1, {"w": torch.tensor([0.0, 8.0])}, num_samples=10, num_steps=4),
    ]
    new = FedNova().aggregate(ServerState(params=x), ups)
    # p = (0.75, 0.25); d = (Δ/τ) ; τ_eff = 0.75*1 + 0.25*4 = 1.75
    d = 0.75 * torch.tensor([1.0, 0.0]) + 0.25 * torch.tensor([0.0, 2.0])
    torch.testing.assert_close(new.params["w"], 1.75 * d)
    plain = FedAvg().aggregate(ServerState(params=x), ups)
    assert not torch.allclose(new.params["w"], plain.params["w"])


@pytest.mark.parametrize("rho", [0.0, 0.5, 0.9])
@pytest.mark.parametrize("steps", [1, 3, 10])
def test_local_step_norm_sums_the_momentum_weights(rho, steps):
    # gradient t reaches the final weights with weight Σ_{s=t}^{τ-1} ρ^{s-t}
    brute = sum(sum(rho ** (s - t) for s in range(t, steps)) for t in range(steps))
    assert local_step_norm(steps, rho) == pytest.approx(brute)


def test_partial_work_flags():
    assert not FedAvg.accepts_partial_work
    assert FedProx.accepts_partial_work and Scaffold.accepts_partial_work
    assert FedNova.accepts_partial_work


def test_max_steps_stops_local_training_early(clients):
    x, y = clients[1]
    w0 = get_params(build_model(SPEC))
    u = train_client(
        build_model(SPEC),
        FedAvg(),
        ClientTask(1, w0),
        x,
        y,
        LOCAL,
        client_generator(0, 1, 1),
        max_steps=3,
    )
    assert u.num_steps == 3
    assert u.metrics["examples"] == 15
