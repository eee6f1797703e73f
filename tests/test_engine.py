"""Oracle tests of the PCN/EP engine (float64, CPU). Each test names its oracle."""
from __future__ import annotations

import math

import pytest
import torch

from workbench.engine import energy, ep, models
from workbench import seeded
from workbench.engine.equilibrate import NudgedPhase, free_phase
from workbench.engine.precision import Precision

F64 = torch.float64

# Small versions of each architecture: same layer maps, fewer channels.
SMALL = {
    "mlp": dict(kw=dict(widths=(24, 16)), size=8, ch=1),
    "vgg5": dict(kw=dict(channels=(4, 6, 8, 8, 8)), size=32, ch=1),
    "vgg10": dict(kw=dict(channels=(4, 4, 6, 6, 8, 8, 8, 8), dense=16), size=32, ch=3),
    "vgg10skip": dict(kw=dict(channels=(4, 4, 6, 6, 8, 8, 8, 8), dense=16), size=32, ch=3),
    "mlp-skip": dict(kw=dict(widths=(24, 16, 16), skips=((0, 2), (1, 4))), size=8, ch=1),
}


def small(name, seed=0, batch=4, classes=5):
    spec = SMALL[name]
    return seeded.batch(name.split("-")[0], batch, num_classes=classes, in_channels=spec["ch"],
                           image_size=spec["size"], seed=seed, data_seed=seed + 1, dtype=F64,
                           **spec["kw"])


def nudged(net, x, y, beta=0.1, cost="ce", **kw):
    """A nudged phase at one signed β for the whole batch, from the strict (float64) free
    phase; ``kw``: NudgedPhase's options."""
    free = free_phase(net, x, Precision.make("strict", F64, x.device))
    return NudgedPhase(net, free, y, torch.full((x.shape[0], 1), beta, dtype=F64), cost, **kw)


def converged_phase(net, x, y, beta, cost="ce", update="mod_pgd", order="async", iters=300):
    """A nudged phase run to its fixed point (float64)."""
    phase = nudged(net, x, y, beta, cost, update=update, order=order)
    tr = phase.run(iters, tol=1e-14)
    assert tr.iterations < iters, "the nudged phase did not converge"
    return phase, phase.free


# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["mlp", "vgg5", "vgg10", "vgg10skip", "mlp-skip"])
def test_free_phase_is_forward_pass_with_zero_energy(name):
    """Oracle: the free phase is the ordinary forward pass, where every ε_k = 0 so E = 0."""
    net, x, y = small(name)
    states = net.free_states(x)
    assert torch.equal(states[-1], net(x))
    assert torch.count_nonzero(energy.layer_energies(net, states)) == 0
    est = ep.estimate(net, x, y, scheme="forward", beta=0.1, iterations=3)
    assert torch.allclose(est.logits, net(x), rtol=0, atol=1e-12)
    ph = est.trace.phases[0]
    assert torch.count_nonzero(ph.energy[0]) == 0
    free_cost = float(energy.cost("ce", net(x), y).mean().detach())
    assert est.trace.free_cost == pytest.approx(free_cost)
    assert ph.cost[0] == pytest.approx(est.trace.free_cost)


@pytest.mark.parametrize("name", ["mlp", "vgg5"])
@pytest.mark.parametrize("scheme", ep.SCHEMES)
@pytest.mark.parametrize("cost", ["ce", "mse"])
def test_every_scheme_tends_to_backprop(name, scheme, cost):
    """Oracle: autograd backprop of the batch-mean cost; EP → BP as β → 0 (cos ≥ 0.9999 at 1e-4).

    Precondition, asserted: every nudged phase converged. (A nudge can flip a max-pool choice
    whose two candidates differ by less than O(β); the phase then cycles and EP cannot match BP.
    Seed 0's batch does that for vgg5 at β = 1e-4; seed 2's does not.)"""
    net, x, y = small(name, seed=2)
    bp, _, _ = ep.bp_gradients(net, x, y, cost)
    est = ep.estimate(net, x, y, scheme=scheme, beta=1e-4, iterations=40, cost=cost,
                      generator=torch.Generator().manual_seed(0), accumulate=False)
    for phase in est.trace.phases:
        assert float(phase.state_change[-1].max()) < 1e-12, "nudged phase did not converge"
    for row in ep.compare(net, est.grads, bp):
        assert row["cosine"] >= 0.9999, row
        assert row["rel_error"] < 2e-3, row


def _same_masks(net, phase, free):
    """No ReLU and no max-pool choice differs between the free and the nudged state: the same
    pre-activations are positive, the same units are on, the same pooling winners."""
    for k in range(1, len(net.layers)):          # the output layer is linear: no mask
        da = phase.da(k)
        if da is not None and not torch.equal(free.a[k] + da > 0, free.a[k] > 0):
            return False
        if not torch.equal(phase.state(k) > 0, free.h[k] > 0):
            return False
        if net.layers[k - 1].pool:
            if not torch.equal(phase.selection(k), free.idx[k]):
                return False
    return True


@pytest.mark.parametrize("name", ["mlp", "vgg5"])
def test_bias_order_one_sided_linear_centered_quadratic(name):
    """Oracle: Taylor expansion in β. One-sided EP error ∝ β, centered ∝ β² (log–log slope),
    at β small enough that no ReLU or pooling choice changes between free and nudged states
    (asserted: with a random batch, a few units sit within 1e-3·β of a ReLU or pooling switch)."""
    net, x, y = small(name, seed=4, batch=2)
    bp, _, _ = ep.bp_gradients(net, x, y, "ce")
    betas = [2e-4, 1e-4, 5e-5, 2.5e-5]
    for b in betas:
        for sign in (1.0, -1.0):
            phase, free = converged_phase(net, x, y, sign * b)
            assert _same_masks(net, phase, free), f"a unit changed sign at beta={sign * b}"

    def err(scheme, b):
        est = ep.estimate(net, x, y, scheme=scheme, beta=b, iterations=300, tol=1e-14,
                          accumulate=False)
        g = torch.cat([est.grads[n].flatten() for n in bp])
        r = torch.cat([bp[n].flatten() for n in bp])
        return float((g - r).norm() / r.norm())

    lb = [math.log(b) for b in betas]

    def slope(errs):
        le = [math.log(e) for e in errs]
        mb, me = sum(lb) / len(lb), sum(le) / len(le)
        return sum((a - mb) * (c - me) for a, c in zip(lb, le)) / sum((a - mb) ** 2 for a in lb)

    assert slope([err("forward", b) for b in betas]) == pytest.approx(1.0, abs=0.1)
    assert slope([err("backward", b) for b in betas]) == pytest.approx(1.0, abs=0.1)
    assert slope([err("centered", b) for b in betas]) == pytest.approx(2.0, abs=0.1)


@pytest.mark.parametrize("name,cost,seed,beta,update", [
    ("mlp", "mse", 3, 0.05, "mod_pgd"), ("mlp", "ce", 3, 0.05, "pgd"),
    ("vgg5", "ce", 4, 2.5e-4, "mod_pgd"), ("vgg10", "ce", 4, 0.05, "mod_pgd")])
def test_converged_phase_satisfies_fixed_point_equations(name, cost, seed, beta, update):
    """Oracle: docs/method.md §2's fixed-point equations, with Δ_k = ε_k − ∂F/∂h_k taken by autograd
    of the plainly written F = E + β·C (workbench.engine.energy), not by the engine's own VJPs.

    (Batches and β are chosen where the phase converges: at β = 0.05 the small vgg5 falls into a
    limit cycle for every seed tried, a max-pool or ReLU choice flipping back and forth; plain
    PGD, which can switch a unit with a < 0 on, cycles on the conv nets too.)"""
    net, x, y = small(name, seed=seed)
    phase, _ = converged_phase(net, x, y, beta, cost=cost, update=update)
    L = len(net.layers)
    states = [x] + [phase.state(k).clone().requires_grad_(k > 0) for k in range(1, L + 1)]
    Ftot = energy.total_energy(net, states, y, beta, cost).sum()
    grads = torch.autograd.grad(Ftot, states[1:])
    with torch.no_grad():
        for k in range(1, L):
            layer, h_prev, h = net.layers[k - 1], states[k - 1], states[k]
            eps = h - layer(h_prev)
            delta = eps - grads[k - 1]
            base = layer.pre(h_prev) if update == "mod_pgd" else layer(h_prev)
            assert torch.allclose(h, torch.relu(base + delta), atol=1e-10), f"layer {k}"
        a_out = net.layers[-1].pre(states[L - 1])
        target = a_out - beta * energy.cost_grad(cost, states[L], y)
        assert torch.allclose(states[L], target, atol=1e-10)
        # and the states are a critical point of F restricted to the active units
        assert float(grads[-1].abs().max()) < 1e-10


def test_two_layer_closed_form():
    """Oracle: hand-derived fixed point of a 1-hidden-layer PCN with MSE cost.

    With m = 1[a₁ > 0] (unchanged by a small nudge), the fixed point of mod-PGD is
    ε₂ = −β (I(1+β) + β W₂ diag(m) W₂ᵀ)⁻¹ (h₂⁰ − t),  ε₁ = m ⊙ W₂ᵀ ε₂, and the forward-EP
    estimate is  ∇W₂ = −(1/β) mean_n ε₂ h₁ᵀ,  ∇W₁ = −(1/β) mean_n (m ⊙ ε₁) xᵀ  (biases likewise),
    with h₁ = h₁⁰ + ε₁ (the hidden deviation equals its error for active units)."""
    torch.manual_seed(7)
    net = models.build("mlp", num_classes=3, in_channels=1, image_size=2, widths=(5,)).to(F64)
    x = torch.rand(4, 1, 2, 2, dtype=F64)
    y = torch.tensor([0, 2, 1, 2])
    beta = 0.05
    W1, b1 = net.layers[0].weight, net.layers[0].bias
    W2 = net.layers[1].weight
    with torch.no_grad():
        xf = x.flatten(1)
        a1 = xf @ W1.T + b1
        m = (a1 > 0).to(F64)
        h1_0 = torch.relu(a1)
        h2_0 = net(x)
        t = torch.nn.functional.one_hot(y, 3).to(F64)
        gW1, gb1, gW2, gb2 = (torch.zeros_like(p) for p in (W1, b1, W2, net.layers[1].bias))
        for n in range(4):
            A = (1 + beta) * torch.eye(3, dtype=F64) + beta * W2 @ torch.diag(m[n]) @ W2.T
            e2 = -beta * torch.linalg.solve(A, h2_0[n] - t[n])
            e1 = m[n] * (W2.T @ e2)
            # precondition of the derivation: the nudge turns no unit on or off
            assert torch.equal(a1[n] + W2.T @ e2 > 0, a1[n] > 0)
            h1 = h1_0[n] + e1
            gW2 += -torch.outer(e2, h1) / (beta * 4)
            gb2 += -e2 / (beta * 4)
            gW1 += -torch.outer(m[n] * e1, xf[n]) / (beta * 4)
            gb1 += -(m[n] * e1) / (beta * 4)
    est = ep.estimate(net, x, y, scheme="forward", beta=beta, iterations=200, tol=1e-15,
                      cost="mse", accumulate=False)
    for name, want in [("layers.0.weight", gW1), ("layers.0.bias", gb1),
                       ("layers.1.weight", gW2), ("layers.1.bias", gb2)]:
        assert torch.allclose(est.grads[name], want, atol=1e-10, rtol=1e-8), name
    # a finite β makes this differ from backprop: the test would catch a BP-shaped shortcut
    bp, _, _ = ep.bp_gradients(net, x, y, "mse")
    assert not torch.allclose(bp["layers.1.weight"], gW2, atol=1e-4)


def test_centered_is_mean_of_forward_and_backward():
    """Oracle: the definition, centered = ½ (forward + backward) at the same β and K."""
    net, x, y = small("vgg5")
    kw = dict(beta=0.02, iterations=5, accumulate=False)
    f = ep.estimate(net, x, y, scheme="forward", **kw).grads
    b = ep.estimate(net, x, y, scheme="backward", **kw).grads
    c = ep.estimate(net, x, y, scheme="centered", **kw).grads
    for n in c:
        assert torch.allclose(c[n], 0.5 * (f[n] + b[n]), atol=1e-12), n


def test_random_scheme_signs_and_seeds():
    """Oracle: random with all-+ signs == forward, all-− == backward; same seed, same draw."""
    net, x, y = small("mlp", batch=16)
    kw = dict(scheme="random", beta=0.05, iterations=4, accumulate=False)
    fwd = ep.estimate(net, x, y, scheme="forward", beta=0.05, iterations=4, accumulate=False)
    plus = ep.estimate(net, x, y, signs=torch.ones(16, dtype=F64), **kw)
    for n in fwd.grads:
        assert torch.allclose(plus.grads[n], fwd.grads[n], atol=1e-14)
    a = ep.estimate(net, x, y, generator=torch.Generator().manual_seed(5), **kw)
    b = ep.estimate(net, x, y, generator=torch.Generator().manual_seed(5), **kw)
    for n in a.grads:
        assert torch.equal(a.grads[n], b.grads[n])
    s = a.trace.phases[0].signs
    assert set(s.tolist()) == {-1.0, 1.0}
    batch = ep.estimate(net, x, y, signs="batch", generator=torch.Generator().manual_seed(1), **kw)
    assert len(set(batch.trace.phases[0].signs.tolist())) == 1


def test_same_seed_same_model_and_estimate():
    """Oracle: determinism — the same seed builds the same model and gives the same estimate."""
    n1, x1, y1 = small("vgg5", seed=11)
    n2, x2, y2 = small("vgg5", seed=11)
    for (_, p), (_, q) in zip(n1.named_parameters(), n2.named_parameters()):
        assert torch.equal(p, q)
    e1 = ep.estimate(n1, x1, y1, scheme="centered", beta=0.05, iterations=5)
    e2 = ep.estimate(n2, x2, y2, scheme="centered", beta=0.05, iterations=5)
    for n in e1.grads:
        assert torch.equal(e1.grads[n], e2.grads[n])


def test_estimate_writes_grad_and_leaves_params_and_inputs():
    """Oracle: loss.backward() semantics — .grad holds (accumulates) the estimate; parameters
    and inputs are untouched."""
    net, x, y = small("mlp")
    params = {n: p.detach().clone() for n, p in net.named_parameters()}
    x0, y0 = x.clone(), y.clone()
    est = ep.estimate(net, x, y, scheme="centered", beta=0.01, iterations=5)
    for n, p in net.named_parameters():
        assert torch.equal(p.grad, est.grads[n])
        assert torch.equal(p, params[n])
    ep.estimate(net, x, y, scheme="centered", beta=0.01, iterations=5)
    for n, p in net.named_parameters():
        assert torch.allclose(p.grad, 2 * est.grads[n])
    ep.estimate(net, x, y, scheme="centered", beta=0.01, iterations=5, accumulate=False)
    for n, p in net.named_parameters():
        assert torch.equal(p.grad, est.grads[n])
    assert torch.equal(x, x0) and torch.equal(y, y0)
    # the BP reference through the same interface equals autograd's backward()
    net.zero_grad(set_to_none=True)
    ep.estimate(net, x, y, scheme="bp", cost="mse")
    ref = {n: p.grad.clone() for n, p in net.named_parameters()}
    net.zero_grad(set_to_none=True)
    energy.cost("mse", net(x), y).mean().backward()
    for n, p in net.named_parameters():
        assert torch.allclose(p.grad, ref[n], atol=1e-14)


def test_trace_shapes_and_tolerance():
    """Oracle: trace bookkeeping (K+1 energy rows, K change rows, F = E + β·C per row); a
    tolerance stops the phase once no state moves more than it; trace=False keeps the last row."""
    net, x, y = small("mlp")
    est = ep.estimate(net, x, y, scheme="centered", beta=0.05, iterations=7)
    L = len(net.layers)
    assert len(est.trace.phases) == 2
    for ph in est.trace.phases:
        assert ph.energy.shape == (8, L) and ph.state_change.shape == (7, L)
        assert ph.cost.shape == (8,) and ph.total.shape == (8,) and ph.iterations == 7
        assert torch.allclose(ph.total, ph.energy.sum(1) + ph.beta * ph.cost, atol=1e-12)
    assert est.trace.phases[0].beta == 0.05 and est.trace.phases[1].beta == -0.05
    early = ep.estimate(net, x, y, scheme="forward", beta=0.05, iterations=500, tol=1e-12)
    assert early.trace.phases[0].iterations < 500
    assert float(early.trace.phases[0].state_change[-1].max()) < 1e-12
    assert float(early.trace.phases[0].state_change[-2].max()) >= 1e-12
    quiet = ep.estimate(net, x, y, scheme="forward", beta=0.05, iterations=7, trace=False)
    assert quiet.trace.phases[0].energy.shape == (1, L)
    assert torch.allclose(quiet.trace.phases[0].energy[-1], est.trace.phases[0].energy[-1])


def test_sync_order_moves_one_layer_per_iteration():
    """Oracle: docs/method.md §2 — sync updates every layer from the old states, so the nudge moves
    down one layer per iteration (async: two), and it differs from async."""
    net, x, y = small("vgg10")
    sync = ep.estimate(net, x, y, scheme="forward", beta=0.05, iterations=3, order="sync")
    reached = [int((row > 0).nonzero().min()) + 1 for row in sync.trace.phases[0].state_change]
    assert reached == [10, 9, 8]
    asyn = ep.estimate(net, x, y, scheme="forward", beta=0.05, iterations=3)
    assert not torch.equal(sync.grads["layers.7.weight"], asyn.grads["layers.7.weight"])


def test_async_order_reaches_output_first_then_one_layer_per_half_sweep():
    """Oracle: docs/method.md §2 — signals travel 2 layers per async iteration, from the output."""
    net, x, y = small("vgg10")
    est = ep.estimate(net, x, y, scheme="forward", beta=0.05, iterations=2)
    ch = est.trace.phases[0].state_change          # (K, L), L = 10
    reached = [int((row > 0).nonzero().min()) + 1 for row in ch]
    assert reached == [9, 7]                       # iteration 1: layers 10, 9; iteration 2: 8, 7


def test_vgg10_parameter_count():
    """Oracle: docs/method.md §4 — vgg10 at 224×224 with 1000 classes has ≈ 62M parameters."""
    net = models.build("vgg10", num_classes=1000, in_channels=3, image_size=224)
    count = sum(p.numel() for p in net.parameters())
    print(f"vgg10 parameters at 224x224, 1000 classes: {count:,}")
    assert 61_000_000 < count < 63_500_000
    assert [layer.kind for layer in net.layers] == ["conv"] * 8 + ["dense"] * 2
    assert [layer.pool for layer in net.layers[:8]] == [True, True, False, True, False, True,
                                                        False, True]
    assert net.layers[0].weight.abs().max() <= math.sqrt(1 / (64 * 9)) + 1e-7  # fan_out bound
    assert net.layers[8].weight.abs().max() <= math.sqrt(1 / 25088) + 1e-7     # fan_in bound


def test_vgg5_architecture():
    """Oracle: docs/method.md §4 — conv 128 | 256,pool | 512,pool | 512,pool | 512,pool | dense."""
    net = models.build("vgg5", num_classes=10, in_channels=1, image_size=32)
    assert [tuple(l.weight.shape[:2]) for l in net.layers] == [
        (128, 1), (256, 128), (512, 256), (512, 512), (512, 512), (10, 2048)]
    assert [l.pool for l in net.layers] == [False, True, True, True, True, False]
    assert net(torch.rand(2, 1, 32, 32)).shape == (2, 10)
    assert "(1): ConvLayer(conv 128->256, maxpool, relu)" in repr(net)
    assert "(5): DenseLayer(dense 2048->10, identity)" in repr(net)
    skip = models.build("vgg10skip", num_classes=10, in_channels=3, image_size=32,
                        channels=(4, 4, 6, 6, 8, 8, 8, 8), dense=16)
    assert "(0): SkipLayer(skip 2->5: 1x1 conv stride 2 4->8)" in repr(skip)


# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,needle", [
    (dict(scheme="sideways"), "accepted: forward, backward, centered, random, il, bp"),
    (dict(cost="hinge"), "accepted: ce, mse"),
    (dict(update="newton"), "accepted: mod_pgd, pgd"),
    (dict(order="random"), "accepted: async, sync"),
    (dict(beta=0.0), "beta must be > 0"),
    (dict(beta=-0.1), "beta must be > 0"),
    (dict(beta=float("nan")), "finite"),
    (dict(iterations=0), "iterations must be an integer >= 1"),
    (dict(iterations=2.5), "iterations must be an integer >= 1"),
    (dict(signs="layer", scheme="random"), "accepted: example, batch"),
    (dict(precision="fp8"), "accepted: auto, strict, fast"),
])
def test_api_errors_name_what_is_accepted(kwargs, needle):
    """Oracle: the API contract — bad arguments raise ValueError naming the accepted values."""
    net, x, y = small("mlp")
    with pytest.raises(ValueError, match=needle.replace("(", r"\(")):
        ep.estimate(net, x, y, **{**dict(scheme="centered", beta=0.1, iterations=2), **kwargs})


def test_api_errors_for_inputs_and_models():
    """Oracle: the API contract — inputs/labels that do not fit the model, unknown models."""
    net, x, y = small("vgg5")
    with pytest.raises(ValueError, match=r"x must have shape \(N, 1, 32, 32\)"):
        ep.estimate(net, x[:, :, :16], y)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 5\)"):
        ep.estimate(net, x, y + 10)
    with pytest.raises(ValueError, match="integer class indices"):
        ep.estimate(net, x, y.double())
    with pytest.raises(ValueError, match=r"y must have shape \(N,\)"):
        ep.estimate(net, x, y[:2])
    with pytest.raises(ValueError, match="at least one example"):
        ep.estimate(net, x[:0], y[:0])
    with pytest.raises(ValueError, match="conv_fan must be 'fan_in' or 'fan_out'"):
        models.build("vgg5", num_classes=10, in_channels=1, image_size=32, conv_fan="fanout")
    with pytest.raises(ValueError, match="available: mlp, resnet18, vgg10, vgg10skip, vgg5, vgg7, vgg9, vit"):
        models.build("resnet50")
    with pytest.raises(ValueError, match="overrides accepted"):
        models.build("vgg5", num_classes=10, in_channels=1, image_size=32, widths=(3,))
    with pytest.raises(ValueError, match="multiple of 16"):
        models.build("vgg5", num_classes=10, in_channels=1, image_size=28)


def test_estimator_settings_round_trip_through_a_dict():
    """Oracle: dataclass equality — EstimatorSettings → to_dict → from_dict is the same settings
    (what config.json stores), and to_dict holds every field by name."""
    s = ep.EstimatorSettings(scheme="random", beta=0.3, iterations=7, cost="mse", update="pgd",
                             order="sync", signs="batch", tol=1e-6, precision="strict",
                             fused=False, perturbation="clamp", step_size=0.5)
    assert ep.EstimatorSettings.from_dict(s.to_dict()) == s
    assert list(s.to_dict()) == list(ep.EstimatorSettings.names())
    assert s.to_dict()["step_size"] == 0.5 and s.to_dict()["tol"] == 1e-6


def test_estimator_settings_boundaries_and_messages():
    """Oracle: the settings' contract (docs/method.md §3) — the smallest accepted values are
    accepted (K = 1; any β > 0), a bool is not a number, each refusal names the field, and
    replace() refuses an unknown name with a ValueError that names it."""
    S = ep.EstimatorSettings
    assert S(iterations=1).iterations == 1
    assert S(beta=1e-300).beta == 1e-300
    for bad in (True, False):
        with pytest.raises(ValueError, match="beta must be a finite positive number"):
            S(beta=bad)
        with pytest.raises(ValueError, match="iterations must be an integer"):
            S(iterations=bad)
    for field, label in (("scheme", "scheme"), ("cost", "cost"), ("update", "update rule"),
                         ("order", "order"), ("signs", "sign mode"), ("precision", "precision"),
                         ("perturbation", "perturbation"),
                         ("state_optimizer", "state optimizer")):
        with pytest.raises(ValueError, match=f"^unknown {label} 'bogus'; accepted: "):
            S(**{field: "bogus"})
    with pytest.raises(ValueError, match="state_momentum must be a number in"):
        S(scheme="il", state_momentum=True)
    assert S(scheme="il", state_optimizer="momentum", state_momentum=0).state_momentum == 0
    for bad in (1, 1.0, 1.5, "0.9"):
        with pytest.raises(ValueError, match="state_momentum must be a number in"):
            S(scheme="il", state_momentum=bad)
    with pytest.raises(ValueError, match="is for scheme 'il'"):
        S(scheme="centered", state_optimizer="adam")
    assert S(scheme="il", state_optimizer="adam").state_optimizer == "adam"
    for bad in (True, float("inf"), "1", 0, -0.5):
        with pytest.raises(ValueError, match="step_size must be a finite number > 0"):
            S(step_size=bad)
    assert S(scheme="bp", beta=0.0, iterations=0).scheme == "bp"     # unused by BP: not checked
    assert S(tol=0).tol == 0 and S(tol=1e-9).tol == 1e-9
    for bad in (True, -1e-9, "0", float("nan")):
        with pytest.raises(ValueError, match="tol must be None or a number >= 0"):
            S(tol=bad)
    with pytest.raises(ValueError, match=r"unknown estimator settings \['bogus'\]"):
        S().replace(bogus=1)
    assert S().replace(beta=0.5, iterations=3) == S(beta=0.5, iterations=3)


def test_compare_and_relative_error_by_their_formulas():
    """Oracle: the definitions written out here — per layer cos = g·r / (‖g‖‖r‖) and rel =
    ‖g − r‖ / ‖r‖ over the layer's weight and bias; NaN where a norm is zero (a zero estimate
    against a zero reference: nothing to compare); relative_error over all parameters or one
    layer; skip maps labelled src→dst after the layers."""
    net, x, y = small("mlp", seed=1)
    g = {n: torch.randn_like(p) for n, p in net.named_parameters()}
    r = {n: torch.randn_like(p) for n, p in net.named_parameters()}
    rows = ep.compare(net, g, r)
    for k, row in enumerate(rows, start=1):
        gv = torch.cat([g[f"layers.{k - 1}.weight"].flatten(), g[f"layers.{k - 1}.bias"]])
        rv = torch.cat([r[f"layers.{k - 1}.weight"].flatten(), r[f"layers.{k - 1}.bias"]])
        assert row["layer"] == k and row["kind"] == "dense"
        assert row["cosine"] == pytest.approx(float(gv @ rv / (gv.norm() * rv.norm())))
        assert row["rel_error"] == pytest.approx(float((gv - rv).norm() / rv.norm()))
        assert ep.relative_error(g, r, layer=k) == pytest.approx(row["rel_error"])
    flat = [torch.cat([t[n].flatten() for n in r]) for t in (g, r)]
    assert ep.relative_error(g, r) == pytest.approx(float((flat[0] - flat[1]).norm()
                                                          / flat[1].norm()))
    zero = {n: torch.zeros_like(t) for n, t in r.items()}
    assert all(math.isnan(row["cosine"]) and row["rel_error"] == pytest.approx(1.0)
               for row in ep.compare(net, zero, r))
    assert all(math.isnan(row["cosine"]) and math.isnan(row["rel_error"])
               for row in ep.compare(net, g, zero))
    skip, _, _ = small("mlp-skip")
    labels = [row["layer"] for row in ep.compare(skip, *(
        {n: torch.ones_like(p) for n, p in skip.named_parameters()} for _ in range(2)))]
    assert labels == [1, 2, 3, 4, "0→2", "1→4"]


def test_bp_reference_defaults_to_cross_entropy_and_signs_must_fit():
    """Oracles: autograd of the mean cross-entropy (BP's default cost), and the API contract for
    a tensor of signs: one ±1 per example (a wrong shape or value is refused)."""
    net, x, y = small("mlp")
    grads, loss, _ = ep.bp_gradients(net, x, y)
    want = torch.autograd.grad(torch.nn.functional.cross_entropy(net(x), y), list(
        net.parameters()))
    assert all(torch.allclose(grads[n], w) for n, w in zip(grads, want))
    for bad in (torch.ones(3, dtype=F64), torch.full((4,), 0.5, dtype=F64)):
        with pytest.raises(ValueError, match=r"signs as a tensor must have shape \(4,\)"):
            ep.estimate(net, x, y, scheme="random", beta=0.1, iterations=2, signs=bad)


def test_builtin_layer_defaults():
    """Oracle: the layers' documented defaults — a conv layer is 3×3 with ReLU and no pool
    unless asked, a dense skip map names itself in the model's repr."""
    conv = models.ConvLayer(3, 4)
    assert not conv.pool and conv.activation == "relu" and conv.weight.shape == (4, 3, 3, 3)
    assert models.ConvLayer(3, 4, relu=False).activation == "identity"
    net, _, _ = small("mlp-skip")
    assert "(0): SkipLayer(skip 0->2: dense 64->16)" in repr(net)


def test_only_compiler_failures_turn_the_fused_kernels_off():
    """Oracle: torch's own exception classes. The automatic fused path falls back to the eager
    kernels on an error of torch.compile — dynamo's, inductor's, or its C++ / CUDA compiler's —
    and on nothing else: an out-of-memory or a shape error is the user's to see."""
    import torch._dynamo.exc as dynamo_exc
    import torch._inductor.exc as inductor_exc
    kinds = [(dynamo_exc, "TorchDynamoException"), (inductor_exc, "InductorError"),
             (inductor_exc, "CppCompileError"), (inductor_exc, "CUDACompileError")]
    found = [getattr(mod, name) for mod, name in kinds if hasattr(mod, name)]
    assert dynamo_exc.TorchDynamoException in found and len(found) >= 3, found
    for kind in found:
        error = kind.__new__(kind)          # constructors differ; the class is what counts
        assert ep._compile_error(error), kind
    for error in (RuntimeError("boom"), torch.OutOfMemoryError("CUDA out of memory"),
                  ValueError("shapes"), Exception()):
        assert not ep._compile_error(error), error


# --------------------------------------------------------------------------------------------
# refusals and arguments that mutation testing found no test for (docs/mutation.md)
def test_a_batch_that_is_not_tensors_or_is_flat_for_a_conv_net_is_refused():
    """Oracle: the message of ep.check_batch — a list is not a batch (whatever the model); a flat
    (N, C·H·W) batch is a batch for a net whose first layer is dense (mlp), not for a conv net
    (vgg5), which needs (N, C, H, W)."""
    net, x, y = small("vgg5")
    with pytest.raises(ValueError, match="x and y must be torch tensors"):
        ep.estimate(net, x.tolist(), y, scheme="forward", iterations=1)
    with pytest.raises(ValueError, match="x and y must be torch tensors"):
        ep.estimate(net, x, y.tolist(), scheme="forward", iterations=1)
    with pytest.raises(ValueError, match=r"x must have shape \(N, 1, 32, 32\) for this vgg5"):
        ep.estimate(net, x.flatten(1), y, scheme="forward", iterations=1)
    mlp, xm, ym = small("mlp")
    flat = ep.estimate(mlp, xm.flatten(1), ym, scheme="forward", iterations=2)
    assert torch.equal(flat.logits, ep.estimate(mlp, xm, ym, scheme="forward",
                                                iterations=2).logits)


@pytest.mark.parametrize("cost", ["ce", "mse"])
def test_the_cost_is_per_example(cost):
    """Oracle: the cost of each example alone (cross-entropy of one row; ½‖h_L − onehot(y)‖² by
    hand) — energy.cost returns one value per example, not their mean."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 4, generator=g, dtype=F64)
    y = torch.tensor([0, 3, 1, 1, 2])
    got = energy.cost(cost, logits, y)
    assert got.shape == (5,)
    for i in range(5):
        if cost == "ce":
            want = -torch.log_softmax(logits[i], 0)[y[i]]
        else:
            want = 0.5 * ((logits[i] - torch.eye(4, dtype=F64)[y[i]]) ** 2).sum()
        assert float(got[i]) == pytest.approx(float(want), rel=1e-12)


def test_backprop_through_estimate_takes_its_precision_and_reports_its_free_cost():
    """Oracle: ep.bp_gradients called directly — estimate(scheme="bp") in fast precision on the
    CPU is its bfloat16-autocast BP (not the strict one, which differs from it), and its trace's
    free cost is BP's batch-mean cost."""
    torch.manual_seed(0)
    net = models.build("mlp", num_classes=5, in_channels=1, image_size=8, widths=(24, 16))
    x, y = torch.randn(6, 1, 8, 8), torch.randint(0, 5, (6,))
    fast, loss, _ = ep.bp_gradients(net, x, y, "ce", "fast")
    strict, strict_loss, _ = ep.bp_gradients(net, x, y, "ce", "strict")
    est = ep.estimate(net, x, y, scheme="bp", precision="fast", accumulate=False)
    assert all(torch.equal(est.grads[k], fast[k]) for k in fast)
    assert not all(torch.equal(fast[k], strict[k]) for k in fast)
    assert est.trace.free_cost == loss == est.loss
    est = ep.estimate(net, x, y, scheme="bp", precision="strict", accumulate=False)
    assert est.trace.free_cost == strict_loss


# --------------------------------------------------------------------------------------------
# what mutation testing's run on the package layout found no test for (docs/mutation.md)
def test_a_batch_off_the_labels_the_device_or_the_dtype_is_refused_or_cast():
    """Oracle: ep.check_batch's contract — labels lie in [0, classes) (the class count itself is
    refused), x and y on the model's device, x cast to the parameters' dtype (a float64 batch
    into a float32 net gives the float32 batch's estimate, EP and BP), and a flat batch only for
    a net whose first layer is a dense built-in layer (not for a general block)."""
    net, x, y = small("mlp", classes=5)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 5\), got range \[0, 5\]"):
        ep.estimate(net, x, torch.tensor([0, 1, 2, 5]), scheme="forward", iterations=1)
    with pytest.raises(ValueError, match=r"x \(cpu\) and y \(meta\) must be on the model's"):
        ep.estimate(net, x, y.to("meta"), scheme="forward", iterations=1)
    net32 = net.float()
    for scheme in ("centered", "bp"):
        a = ep.estimate(net32, x.double(), y, scheme=scheme, iterations=2, accumulate=False)
        b = ep.estimate(net32, x.float(), y, scheme=scheme, iterations=2, accumulate=False)
        assert all(torch.equal(a.grads[k], b.grads[k]) for k in b.grads), scheme
    torch.manual_seed(0)
    blocks = models.from_blocks([torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1),
                                                     torch.nn.Flatten()),
                                 torch.nn.Linear(2 * 8 * 8, 5)],
                                activations=["relu", "identity"]).to(F64)
    ep.estimate(blocks, x, y, scheme="forward", iterations=1)
    with pytest.raises(ValueError, match=r"x must have shape \(N, 1, 8, 8\)"):
        ep.estimate(blocks, x.flatten(1), y, scheme="forward", iterations=1)


def test_backprop_through_estimate_accumulates_and_returns_its_logits_and_settings():
    """Oracle: estimate's contract for scheme bp as for EP — ``.grad`` accumulates by default
    and is overwritten with accumulate=False; the logits are the forward pass; the settings
    are the ones used."""
    net, x, y = small("mlp")
    first = ep.estimate(net, x, y, scheme="bp")
    once = {n: p.grad.clone() for n, p in net.named_parameters()}
    again = ep.estimate(net, x, y, scheme="bp")
    assert all(torch.equal(p.grad, 2 * once[n]) for n, p in net.named_parameters())
    ep.estimate(net, x, y, scheme="bp", accumulate=False)
    assert all(torch.equal(p.grad, once[n]) for n, p in net.named_parameters())
    assert torch.equal(first.logits, net(x).detach()) and again.settings.scheme == "bp"
    assert again.settings == first.settings


def test_a_batch_of_one_example_is_the_per_example_estimate():
    """Oracle: the energy is a sum over examples and the cost a batch mean, so (without
    BatchNorm) the estimate of a batch is the mean of its one-example estimates."""
    net, x, y = small("mlp")
    whole = ep.estimate(net, x, y, scheme="forward", iterations=4, accumulate=False).grads
    ones = [ep.estimate(net, x[i:i + 1], y[i:i + 1], scheme="forward", iterations=4,
                        accumulate=False).grads for i in range(x.shape[0])]
    for k, g in whole.items():
        assert torch.allclose(g, sum(o[k] for o in ones) / len(ones), rtol=1e-10, atol=1e-13), k


def test_random_signs_given_as_integers_are_the_forward_and_backward_estimates():
    """Oracle: scheme random with every sign +1 (−1) is scheme forward (backward), bit for bit
    in float64: signs given as an int64 tensor are cast to the state dtype before β multiplies
    them."""
    net, x, y = small("mlp")
    n = x.shape[0]
    for sign, scheme in ((1, "forward"), (-1, "backward")):
        want = ep.estimate(net, x, y, scheme=scheme, beta=0.01, iterations=3, accumulate=False)
        got = ep.estimate(net, x, y, scheme="random", beta=0.01, iterations=3, accumulate=False,
                          signs=torch.full((n,), sign, dtype=torch.long))
        assert all(torch.equal(got.grads[k], want.grads[k]) for k in want.grads), scheme


def test_a_compiler_failure_of_the_automatic_fused_path_falls_back_to_eager_once(monkeypatch):
    """Oracle: estimate's contract — with ``fused`` left automatic, a compiler error is warned
    once and the eager kernels give the estimate (equal to fused=False's, trace and diagnostics
    included), and later calls go straight to them; an explicit fused=True, or any error that
    is not the compiler's, is raised. The fused path is made to fail here by hand (on the CPU the
    automatic choice is eager)."""
    import dataclasses
    import torch._dynamo.exc as dynamo_exc
    from workbench.engine.settings import EstimatorSettings

    net, x, y = small("mlp")
    kw = dict(scheme="centered", iterations=3, accumulate=False, diagnostics=True)
    want = ep.estimate(net, x, y, fused=False, **kw)
    real_resolved, real = EstimatorSettings.resolved, ep._ep_gradients
    monkeypatch.setattr(EstimatorSettings, "resolved", lambda self, *a, **k: dataclasses.replace(
        real_resolved(self, *a, **k), fused=True if self.fused is None else self.fused))
    calls, error = [], [dynamo_exc.TorchDynamoException("injected")]

    def failing(net, x, y, s, prec, sign_list, fused, trace, diagnostics=False):
        calls.append(fused)
        if fused:
            raise error[0]
        return real(net, x, y, s, prec, sign_list, fused, trace, diagnostics)

    monkeypatch.setattr(ep, "_ep_gradients", failing)
    monkeypatch.setattr(ep, "_FUSED_BROKEN", [])
    with pytest.warns(RuntimeWarning, match="TorchDynamoException: injected"):
        got = ep.estimate(net, x, y, **kw)
    assert calls == [True, False] and ep._FUSED_BROKEN == [repr(error[0])]
    for a, b in ((got.grads, want.grads), ):
        assert all(torch.equal(a[k], b[k]) for k in b)
    for pa, pb in zip(got.trace.phases, want.trace.phases):
        assert torch.equal(pa.energy, pb.energy) and torch.equal(pa.switched, pb.switched)
    assert got.logits is not None and torch.equal(got.logits, want.logits)
    calls.clear()
    ep.estimate(net, x, y, **kw)
    assert calls == [False]
    with pytest.raises(dynamo_exc.TorchDynamoException, match="injected"):
        ep.estimate(net, x, y, fused=True, **kw)
    monkeypatch.setattr(ep, "_FUSED_BROKEN", [])
    error[0] = RuntimeError("not the compiler")
    with pytest.raises(RuntimeError, match="not the compiler"):
        ep.estimate(net, x, y, **kw)
    assert ep._FUSED_BROKEN == []


@pytest.mark.parametrize("scheme,cost", [("il", "ce"), ("il", "mse"), ("forward", "ce"),
                                         ("forward", "mse")])
def test_the_reported_cost_and_energies_are_where_each_scheme_puts_them(scheme, cost):
    """Oracle: energy.layer_energies on the phase's own states (½‖ε_k‖², the plain form) and
    energy.cost — EP reports the cost at the output state, IL at the output's prediction; IL
    with CE puts the cross-entropy of the prediction in the output's energy. The batch holds no
    example of the last class (one-hot targets keep the model's class count)."""
    from workbench.engine.settings import EstimatorSettings
    net, x, _ = small("mlp", classes=5)
    y = torch.tensor([0, 1, 2, 3])
    s = EstimatorSettings(scheme=scheme, cost=cost, step_size=0.5)
    phase = nudged(net, x, y, 1.0 if scheme == "il" else 0.1, cost, step_size=s.step_size,
                   **ep.phase_options(s))
    for _ in range(3):
        phase.step()
    L = net.wiring.L
    at_state, at_prediction = (energy.cost(cost, t, y) for t in (phase.state(L),
                                                                 phase.prediction()))
    assert not torch.allclose(at_state, at_prediction)
    assert torch.equal(phase.costs(), at_prediction if scheme == "il" else at_state)
    if scheme == "il":
        momentum = s.replace(state_optimizer="momentum", state_momentum=0.5)
        assert ep.phase_options(momentum)["state_momentum"] == 0.5
    plain = energy.layer_energies(net, [phase.state(k) for k in range(L + 1)]).mean(0)
    e = phase.energies()
    assert torch.allclose(e[:L - 1], plain[:L - 1], rtol=1e-12, atol=0)
    if scheme == "il" and cost == "ce":
        assert torch.equal(e[L - 1], energy.cost("ce", phase.prediction(), y).mean())
        assert not torch.allclose(e[L - 1], plain[L - 1])
    else:
        assert torch.allclose(e[L - 1], plain[L - 1], rtol=1e-12, atol=0)


def test_the_phase_trace_records_what_run_phase_says():
    """Oracle: run_phase's docstring and PhaseTrace's fields — by default every iteration is
    recorded (one row more than iterations) without diagnostics; with clamping the total is the
    energy alone (the cost term is held); a run stops at the first iteration whose largest
    change is below ``tol`` (strictly); β is |β| for signed phases; step(measure=False) measures
    nothing."""
    from workbench.engine.recording import run_phase
    net, x, y = small("mlp")

    def phase(beta=0.1, **kw):
        return nudged(net, x, y, beta, **kw)

    tr = run_phase(phase(perturbation="clamp", beta=0.5), 3)
    assert tr.energy.shape[0] == 4 and tr.switched is None and tr.iterations == 3
    assert torch.equal(tr.total, tr.energy.sum(1))
    assert phase().run(2).switched is None
    assert phase().step(measure=False) is None
    full = phase().run(8)
    changes = full.state_change.amax(1)
    tol = float(changes[2])
    want = next(t for t in range(1, 9) if float(changes[t - 1]) < tol)
    assert want > 3 and phase().run(8, tol=tol).iterations == want
    n = x.shape[0]
    est = ep.estimate(net, x, y, scheme="random", beta=0.05, iterations=2,
                      signs=torch.tensor([-1] + [1] * (n - 1)))
    assert est.trace.phases[0].beta == 0.05


def test_each_pre_activation_and_drive_is_computed_once_per_change():
    """Oracle: the caches' contract (NudgedPhase.da, .drive): in a half-sweep a layer's
    pre-activation is recomputed only after one of its inputs changed — each edge's map once at
    most, and not at all when nothing changed — and each drive once, though a skip's target
    feeds two updates (mlp-skip: layers 1 and 3 both read layer 4's drive). The updates are the
    same with the caches as computed afresh."""
    net, x, y = small("mlp-skip")
    phase = nudged(net, x, y)
    for _ in range(3):
        phase.step()
    deltas, drives = [], []
    for i, m in enumerate(phase.maps):
        def counted(*a, _f=m.delta, _i=i):
            deltas.append(_i)
            return _f(*a)
        m.delta = counted
    inner = phase._drive
    phase._drive = lambda k, scale: (drives.append(k), inner(k, scale))[1]
    shared = False
    for sweep in phase.sweeps:
        del deltas[:], drives[:]
        first = phase.updates(sweep)
        assert len(deltas) == len(set(deltas)), (sweep, deltas)
        targets = [phase.edges[i].dst for k in sweep for i in phase.nodes[k].out]
        shared |= len(targets) > len(set(targets))
        assert sorted(drives) == sorted(set(targets)), (sweep, drives)
        del deltas[:]
        again = phase.updates(sweep)
        assert deltas == []
        for (k, a), (_, b) in zip(first, again):
            assert (a is None and b is None) or torch.equal(a, b), k
        for k, d in first:
            phase._set(k, d)
    assert shared


def test_signs_and_flattened_gradients_are_made_on_the_device_asked_for():
    """Oracle: the contracts of ep._phase_signs (one ±1 tensor per nudged phase — forward +1,
    backward −1, centered both, IL +1 — in the state dtype on the batch's device) and ep._flat
    (the named gradients flattened in float64, in the order asked for, on the device asked for;
    empty for none), checked on torch's meta device: the one other device every machine has."""
    from workbench.engine.settings import EstimatorSettings
    s, meta, cpu = EstimatorSettings(), torch.device("meta"), torch.device("cpu")
    for scheme, want in (("forward", [1.0]), ("backward", [-1.0]), ("centered", [1.0, -1.0]),
                         ("il", [1.0])):
        got = ep._phase_signs(s.replace(scheme=scheme), 3, None, None, meta, F64)
        assert [(t.device, t.dtype, t.shape) for t in got] == [(meta, F64, (3,))] * len(want)
        got = ep._phase_signs(s.replace(scheme=scheme), 3, None, None, cpu, F64)
        assert [t.tolist() for t in got] == [[v] * 3 for v in want]
    signs = torch.tensor([1, -1, 1])
    got, = ep._phase_signs(s.replace(scheme="random"), 3, signs, None, meta, F64)
    assert (got.device, got.dtype) == (meta, F64)
    empty = ep._flat({}, [], meta)
    assert (empty.device, empty.dtype, empty.shape) == (meta, F64, (0,))
    grads = {"a": torch.ones(2, 2), "b": torch.arange(3.0)}
    flat = ep._flat(grads, ["b", "a"])
    assert flat.dtype == F64 and flat.tolist() == [0, 1, 2, 1, 1, 1, 1]
    assert ep._flat(grads, ["a"], meta).device == meta


def test_the_first_batch_of_a_general_net_may_come_in_another_float_dtype():
    """Oracle: check_batch's contract — the batch is cast to the parameters' dtype before
    anything reads it, the first batch (which sets a general net's shapes) included: a float32
    net of blocks given a float64 first batch gives the float32 batch's estimate."""
    from torch import nn

    def fresh():
        torch.manual_seed(0)
        return models.from_blocks([nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Flatten()),
                                   nn.Linear(2 * 8 * 8, 5)], activations=["relu", "identity"])
    _, x, y = small("mlp")
    kw = dict(scheme="forward", iterations=2, accumulate=False)
    a = ep.estimate(fresh(), x, y, **kw)
    b = ep.estimate(fresh(), x.float(), y, **kw)
    assert a.grads.keys() == b.grads.keys()
    assert all(torch.equal(a.grads[k], b.grads[k]) for k in b.grads)


def test_a_phase_built_by_hand_has_the_documented_defaults(monkeypatch):
    """Oracle: NudgedPhase's docstring — by default the paper's nudged phase: the mod-PGD update,
    the async order, nudging (not clamping), step size 1, the squared output energy, the cost at
    the output state, the eager kernels (nothing compiled); a state optimizer's momentum 0.9
    unless given. And step()'s: by default it returns each layer's largest change."""
    from workbench.engine import kernels

    def no_compiling():
        raise AssertionError("the fused kernels were asked for")
    monkeypatch.setattr(kernels, "compiled", no_compiling)
    net, x, y = small("mlp")
    phase = nudged(net, x, y)
    assert (phase.update, phase.order, phase.perturbation, phase.step_size, phase.output_energy,
            phase.prediction_cost) == ("mod_pgd", "async", "nudge", 1.0, "squared", False)
    il = nudged(net, x, y, state_optimizer="momentum")
    assert {r.moments.mu for r in il.rules[1:]} == {0.9}
    L = phase.L
    for _ in range(2):
        before = [phase.state(k).clone() for k in range(1, L + 1)]
        change = phase.step()
        want = torch.stack([(phase.state(k) - before[k - 1]).abs().amax() for k in range(1, L + 1)])
        assert change.shape == (L,) and torch.allclose(change, want, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", ["mlp", "vgg5"])
def test_errors_and_energies_at_any_state_are_the_plain_forms(name):
    """Oracle: energy.layer_energies on the full states h⁰ + d (the plain form), at states the
    nudged dynamics never visit (they spread down from the output, so a layer's input moves
    only after the layer has): deviations set by hand on every other layer below the output,
    the others — the output's included — exactly zero, so that the output's error is
    −δa_L alone. Each error ε_k = h_k − f_k(h_{k−1}) to 1e-12, and the energies."""
    net, x, y = small(name)
    phase = nudged(net, x, y)
    L, gen = phase.L, torch.Generator().manual_seed(0)
    for k in range(L - 1, 0, -2):
        phase._set(k, 0.1 * torch.randn(phase.free.h[k].shape, generator=gen, dtype=F64))
    assert phase.deviation(L) is None and phase.error(L) is not None
    states = [phase.state(k) for k in range(L + 1)]
    for k in range(1, L + 1):
        eps = phase.error(k)
        want = states[k] - net.predict(k, states)
        assert torch.allclose(torch.zeros_like(want) if eps is None else eps, want, rtol=0,
                              atol=1e-12), k
    plain = energy.layer_energies(net, states).mean(0)
    assert torch.allclose(phase.energies(), plain, rtol=1e-12, atol=0)
