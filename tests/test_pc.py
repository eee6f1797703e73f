"""Predictive coding's own training beside EP (docs/method.md §10): inference learning (IL) and
incremental PC (iPC). Each test names its oracle; float64 on the CPU."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from test_engine import small
from workbench.engine import ep

F64 = torch.float64


def plain_il(net, x, y, cost: str, steps: int, alpha: float, order: str,
             optimizer: str = "gd", mu: float = 0.9):
    """IL written out here on full states: hidden states from the forward pass, the output
    clamped (mse: E's last term ½‖onehot(y) − f_L(h_{L−1})‖²; ce: CE(f_L(h_{L−1}), y)),
    ``steps`` steps of h ← relu(h − α·u) with u = ∂E/∂h (gd), or heavy-ball momentum or Adam
    (β₁ = mu, β₂ = 0.999, ε = 1e-8, bias-corrected) on it,
    every hidden layer from the same old states (sync) or the layers of the output's parity
    first, then the others (async); the gradient ∂E/∂θ at the relaxed state, batch mean."""
    L = len(net.layers)
    with torch.no_grad():
        states = net.free_states(x)
    target = F.one_hot(y, states[-1].shape[1]).to(x.dtype)

    def energy(hs):
        e = sum(0.5 * (hs[k] - net.predict(k, hs)).flatten(1).pow(2).sum()
                for k in range(1, L))
        pred = net.layers[L - 1](hs[L - 1])
        out = F.cross_entropy(pred, y, reduction="sum") if cost == "ce" \
            else 0.5 * (target - pred).pow(2).sum()
        return e + out

    hidden = list(range(1, L))
    if order == "sync":
        sweeps = [hidden]
    else:
        sweeps = [[k for k in hidden if k % 2 == L % 2], [k for k in hidden if k % 2 != L % 2]]
    velocity, second, t = {}, {}, 0
    for _ in range(steps):
        t += 1
        for sweep in sweeps:
            hs = [states[0]] + [h.detach().requires_grad_() for h in states[1:]]
            grads = torch.autograd.grad(energy(hs), hs[1:], allow_unused=True)
            new = list(states)
            with torch.no_grad():
                for k in sweep:
                    u = grads[k - 1]
                    if optimizer == "momentum":
                        velocity[k] = u if k not in velocity else mu * velocity[k] + u
                        u = velocity[k]
                    elif optimizer == "adam":
                        velocity[k] = (1 - mu) * u + (mu * velocity[k] if k in velocity else 0)
                        second[k] = (1 - 0.999) * u * u + (0.999 * second[k] if k in second
                                                           else 0)
                        u = (velocity[k] / (1 - mu ** t)) / (
                            (second[k] / (1 - 0.999 ** t)).sqrt() + 1e-8)
                    new[k] = torch.relu(states[k] - alpha * u)
            states = new
    params = [p for _, p in net.named_parameters()]
    hs = [h.detach() for h in states]
    gs = torch.autograd.grad(energy(hs) / x.shape[0], params)
    return dict(zip([n for n, _ in net.named_parameters()], gs))


@pytest.mark.parametrize("cost", ["mse", "ce"])
@pytest.mark.parametrize("order", ["sync", "async"])
@pytest.mark.parametrize("optimizer", ["gd", "momentum", "adam"])
def test_inference_learning_equals_a_plain_il_loop(cost, order, optimizer):
    """Oracle: plain_il above (autograd on E written out here, full states) — the engine's
    scheme="il" gives the same gradient to 1e-10 relative, for both costs, both orders, with
    and without momentum or Adam on the states (mlp and vgg5; Adam on the mlp only: its
    normalised, nearly sign-like steps turn last-bit differences between the two forms of the
    same gradient on vgg5's pooled maps into 2e-5)."""
    for name in ("mlp",) if optimizer == "adam" else ("mlp", "vgg5"):
        net, x, y = small(name, seed=3)
        want = plain_il(net, x, y, cost, steps=6, alpha=0.2, order=order, optimizer=optimizer)
        got = ep.estimate(net, x, y, scheme="il", iterations=6, step_size=0.2, cost=cost,
                          order=order, state_optimizer=optimizer, state_momentum=0.9,
                          accumulate=False).grads
        assert ep.relative_error(got, want) < 1e-10, name
        moved = ep.estimate(net, x, y, scheme="il", iterations=1, step_size=0.2, cost=cost,
                            order=order, accumulate=False).grads
        assert ep.relative_error(moved, want) > 1e-4        # the steps matter (can fail)


def test_incremental_pc_equals_a_plain_ipc_loop():
    """Oracle: iPC written out here — per training step the states from the forward pass, then
    T times: one sync inference step h ← relu(h − α ∂E/∂h), then θ ← θ − lr ∂E/∂θ (batch mean)
    by hand — equals workbench.engine.pc.ipc_step with torch's SGD (no momentum) after 3 training steps
    of T = 2 (six weight updates), to 1e-12; and the weights did move."""
    import copy

    from workbench.engine import pc
    net, x, y = small("mlp", seed=5)
    ref = copy.deepcopy(net)
    start = {n: p.detach().clone() for n, p in net.named_parameters()}
    s = ep.EstimatorSettings(scheme="il", iterations=2, step_size=0.3, order="sync", cost="ce")
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for _ in range(3):
        pc.ipc_step(net, x, y, s, opt)
    L = len(ref.layers)
    params = list(ref.parameters())
    for _ in range(3):
        with torch.no_grad():
            states = ref.free_states(x)
        for _ in range(2):
            hs = [states[0]] + [h.detach().requires_grad_() for h in states[1:]]
            e = sum(0.5 * (hs[k] - ref.predict(k, hs)).pow(2).sum() for k in range(1, L)) \
                + F.cross_entropy(ref.predict(L, hs), y, reduction="sum")
            grads = torch.autograd.grad(e, hs[1:L])
            with torch.no_grad():
                states = [states[0]] + [torch.relu(states[k] - 0.3 * grads[k - 1])
                                        for k in range(1, L)] + [states[L]]
            hs = [h.detach() for h in states]
            e = sum(0.5 * (hs[k] - ref.predict(k, hs)).pow(2).sum() for k in range(1, L)) \
                + F.cross_entropy(ref.predict(L, hs), y, reduction="sum")
            gs = torch.autograd.grad(e / x.shape[0], params)
            with torch.no_grad():
                for p, g in zip(params, gs):
                    p -= 0.1 * g
    for (n, a), b in zip(net.named_parameters(), ref.parameters()):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-14), n
        assert not torch.equal(a, start[n]), n


@pytest.mark.slow
@pytest.mark.parametrize("incremental", [False, True])
def test_il_and_ipc_training_resume_exactly_after_sigkill(tmp_path, incremental):
    """Oracle: the uninterrupted run — a training run with IL (--scheme il) or iPC killed with
    SIGKILL once its first checkpoint exists, then resumed, ends with the same metrics lines
    (timings aside) and bit-identical parameters."""
    import json

    from conftest import write_mnist
    from test_train_processes import resume_equals_uninterrupted
    write_mnist(tmp_path / "data" / "fashion-mnist", n_train=1024, n_test=64)
    flags = ["--dataset", "fashion-mnist", "--data-root", str(tmp_path / "data"), "--no-download",
             "--model", "mlp", "--model-arg", "widths=[64,64]",
             *(["--incremental"] if incremental else []), "--scheme", "il", "--iterations", "8", "--step-size", "0.2", "--order", "sync",
             "--state-optimizer", "momentum", "--epochs", "2", "--batch-size", "16", "--lr", "0.02",
             "--checkpoint-every", "5", "--probe-every", "7", "--progress", "none", "--device",
             "cpu", "--no-tensorboard"]
    b = resume_equals_uninterrupted(flags, tmp_path)
    assert json.loads((b / "summary.json").read_text())["config"]["incremental"] is incremental


def test_il_with_mse_is_clamping_at_beta_one_bit_for_bit():
    """Oracle: the engine's clamping (docs/method.md §3, Eq. 8) — IL with the MSE cost and plain
    gradient descent is perturbation="clamp" at β = 1 with PGD of step α: the same gradients bit
    for bit, in both orders."""
    net, x, y = small("vgg5", seed=1)
    for order in ("sync", "async"):
        il = ep.estimate(net, x, y, scheme="il", iterations=5, step_size=0.3, cost="mse",
                         order=order, accumulate=False).grads
        clamp = ep.estimate(net, x, y, scheme="forward", perturbation="clamp", beta=1.0,
                            update="pgd", iterations=5, step_size=0.3, cost="mse", order=order,
                            accumulate=False).grads
        assert all(torch.equal(il[n], clamp[n]) for n in il), order


def test_the_state_optimizer_rule_reads_none_as_zero_and_steps_the_states_gradient():
    """Oracle: the step written out here — the state's gradient ``g = ε − Δ`` with
    ``ε = d − (f(a⁰ + δa) − f(a⁰))`` (f = relu, or the identity for a linear layer), one
    StateMoments step ``u`` and ``h ← f_proj(h − α u)`` — for both optimizers and both kinds of
    layer, over three steps (memory included); an absent (None) argument is an exact zero, and
    maps' outputs given in float64 are read in the state's float32."""
    import itertools
    from workbench.engine.equilibrate import StateMoments, StateOptimizerRule
    g = torch.Generator().manual_seed(5)
    a0 = torch.randn(3, 4, generator=g)
    h0 = torch.relu(a0)
    steps = [{k: torch.randn(3, 4, generator=g, dtype=torch.float64) for k in ("da", "delta")}
             for _ in range(3)]
    d0 = torch.randn(3, 4, generator=g)
    for kind, relu in itertools.product(("momentum", "adam"), (True, False)):
        for absent in itertools.product((False, True), repeat=3):
            rule = StateOptimizerRule(kind, relu, 0.25, 0.5)
            ref = StateMoments(kind, 0.5)
            base = h0 if relu else a0
            d = None if absent[0] else d0
            for t, step in enumerate(steps, 1):
                da = None if absent[1] else step["da"]
                delta = None if absent[2] else step["delta"]
                got = rule(None, a0, base, d, da, delta)
                f = torch.relu if relu else (lambda z: z)
                zd = torch.zeros_like(a0) if d is None else d
                zda = torch.zeros_like(a0) if da is None else da.float()
                zdelta = torch.zeros_like(a0) if delta is None else delta.float()
                grad = zd - (f(a0 + zda) - f(a0)) - zdelta
                s = zd - 0.25 * ref.direction(grad, t)
                want = (torch.relu(h0 + s) - h0) if relu else s
                if got is None:           # nothing moved and no memory yet: the state stays
                    assert not grad.any() and d is None
                    ref = StateMoments(kind, 0.5)
                    continue
                assert got.dtype == torch.float32
                assert torch.allclose(got, want, rtol=1e-6, atol=1e-7), (kind, relu, absent, t)
                d = got
            if ref.m is not None:        # a state with memory that nothing drives still moves
                got = rule(None, a0, base, None, None, None)
                s = -0.25 * ref.direction(torch.zeros_like(a0), 4)
                want = (torch.relu(h0 + s) - h0) if relu else s
                assert torch.allclose(got, want, rtol=1e-6, atol=1e-7), (kind, relu, absent)
