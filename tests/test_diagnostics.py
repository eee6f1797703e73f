"""Diagnostics of the nudged phase: switched units, changed pooling winners, the fixed-point
residual, and the bias/truncation split of an estimate's error. Each test names its oracle."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from plain import pre_activation, skips_into
from test_engine import small
from workbench.engine import ep
from workbench.engine.equilibrate import NudgedPhase, free_phase
from workbench.engine.precision import Precision

F64 = torch.float64


def _phase(name, beta, order="async", seed=0, step_size=1.0):
    net, x, y = small(name, seed=seed)
    free = free_phase(net, x, Precision.make("strict", F64, x.device))
    b = torch.full((x.shape[0], 1), beta, dtype=F64)
    return net, NudgedPhase(net, free, y, b, "ce", "mod_pgd", order,
                            step_size=step_size), free


def test_switched_fractions_equal_a_recount_from_explicit_forward_passes():
    """Oracle: two explicit forward computations — the free state's pre-activations and those
    of the nudged state (each layer's linear part, skips and pooling applied to the nudged
    states of the layers below): the fraction of hidden units whose sign differs, and the
    fraction of 2×2 windows whose max_pool2d winner differs, equal the trace's last row, for
    a large β where units do switch."""
    for name in ("vgg5", "vgg10skip"):
        net, phase, free = _phase(name, 2.0, seed=1)
        tr = phase.run(6, diagnostics=True)
        states = [phase.state(k) if k else free.h[0] for k in range(len(net.layers) + 1)]
        switched = []
        for k, layer in enumerate(net.layers, start=1):
            a = pre_activation(net, k, states)
            frac = float(((a > 0) != (free.a[k] > 0)).double().mean()) if layer.relu else 0.0
            switched.append(frac)
            if layer.pool:
                z = layer.linear(states[k - 1])
                for skip in skips_into(net, k):
                    z = z + skip.linear(states[skip.src]).reshape(z.shape)
                _, idx = F.max_pool2d(z, 2, 2, return_indices=True)
                changed = float((idx != free.idx[k]).double().mean())
                assert abs(float(tr.pool_changed[-1, k - 1]) - changed) < 1e-12, (name, k)
            else:
                assert float(tr.pool_changed[-1, k - 1]) == 0
        assert torch.allclose(tr.switched[-1], torch.tensor(switched, dtype=F64), atol=1e-12)
        assert float(tr.switched[-1].max()) > 0 and float(tr.pool_changed[-1].max()) > 0
        assert tr.switched.shape == tr.energy.shape and float(tr.switched[0].max()) == 0


def test_residual_is_zero_at_a_fixed_point_and_the_next_sync_change():
    """Oracles: the definition r = h − T(h) — for the sync order T is exactly the next
    iteration, so the residual recorded after iteration t is the state change of iteration
    t + 1 (every layer, max; to rounding); at a converged nudged state (float64, state change
    < 1e-14) the residual is < 1e-12 whatever the order (sync damped to α = 0.5: undamped it
    converges too slowly here)."""
    net, phase, _ = _phase("vgg10", 0.05, order="sync")
    tr = phase.run(8, diagnostics=True)
    assert torch.allclose(tr.residual_max[1:-1], tr.state_change[1:], rtol=1e-12, atol=1e-15)
    assert torch.all(tr.residual_rms <= tr.residual_max + 1e-15)
    for order, alpha in (("async", 1.0), ("sync", 0.5)):
        net, phase, _ = _phase("mlp", 0.05, order=order, step_size=alpha)
        tr = phase.run(400, tol=1e-14, diagnostics=True)
        assert tr.iterations < 400 and float(tr.residual_max[-1].max()) < 1e-12, order


def test_estimate_reports_diagnostics_and_skips_them_by_default():
    """Oracle: the API contract — ``diagnostics=True`` fills the four fields for every phase
    (only the final row with ``trace=False``), the default leaves them None and the estimate is
    the same either way."""
    net, x, y = small("vgg5")
    plain = ep.estimate(net, x, y, scheme="centered", beta=0.1, iterations=4, accumulate=False)
    diag = ep.estimate(net, x, y, scheme="centered", beta=0.1, iterations=4, accumulate=False,
                       diagnostics=True)
    quiet = ep.estimate(net, x, y, scheme="centered", beta=0.1, iterations=4, accumulate=False,
                        diagnostics=True, trace=False)
    assert all(p.switched is None for p in plain.trace.phases)
    for p in diag.trace.phases:
        assert p.switched.shape == p.residual_max.shape == (5, len(net.layers))
    assert all(p.switched.shape == (1, len(net.layers)) for p in quiet.trace.phases)
    assert all(torch.equal(plain.grads[n], diag.grads[n]) for n in plain.grads)


def test_bias_explorer_splits_the_error_into_bias_and_truncation():
    """Oracles: the triangle inequality — per layer and scheme, ‖g_K − g_BP‖ ≤ ‖g_∞ − g_BP‖ +
    ‖g_K − g_∞‖ (all over ‖g_BP‖); and convergence — the truncation part falls as K grows
    (K = 32 well below K = 2 on every layer, on a model whose nudged phase converges: the tiny
    VGGs at β = 0.01 cycle between pooling winners instead); the figure holds split()'s
    numbers."""
    from workbench import widgets
    net, _, _ = small("mlp", seed=1)
    data = widgets.synthetic_data(16, 1, 8, num_classes=5)
    ex = widgets.GradientBiasExplorer({"m": net}, data, batch_size=8, beta=0.05,
                                      iterations=2, schemes=("centered", "forward"),
                                      betas=(1e-3, 1e-2), iterations_sweep=(2,),
                                      converged_iterations=200)
    for scheme in ("centered", "forward"):
        short, long = ex.split(scheme), ex.split(scheme, iterations=32)
        for row in short + long:
            assert row["total"] <= row["bias"] + row["truncation"] + 1e-12, row
        assert all(b["truncation"] < 0.5 * a["truncation"] for a, b in zip(short, long))
    bars = {t.name: t.y for t in ex.figures["split"].data if t.xaxis == "x2"}
    assert list(bars["centered"]) == [r["truncation"] for r in ex.split("centered")]


def test_energy_explorer_draws_the_diagnostics_of_the_phase_shown():
    """Oracle: the estimate's trace — the switched and residual panels hold its rows for the
    phase chosen; switching the phase (view only) costs no engine call."""
    from workbench import widgets
    net, _, _ = small("vgg5", seed=1)
    ex = widgets.EnergyExplorer({"m": net}, widgets.synthetic_data(16, 1, 32, num_classes=5),
                                batch_size=8, beta=0.5, iterations=4)
    calls = ex.lab.engine_calls
    for phase in (0, 1):
        ex.controls["phase"].value = phase
        ph = ex.estimate.trace.phases[phase]
        lines = {t.name: t.y for t in ex.figures["switched"].data}
        assert list(lines["layer 2"]) == ph.switched[:, 1].tolist()
        assert list(lines["layer 2 pool"]) == ph.pool_changed[:, 1].tolist()
        res = {t.name: t.y for t in ex.figures["residual"].data}
        assert res["layer 1"][-1] == float(ph.residual_max[-1, 0])
    assert ex.lab.engine_calls == calls


def test_the_training_probe_records_switches_and_residual(tmp_path):
    """Oracle: a direct ep.estimate with diagnostics on the probe batch at the initial weights
    (as test_train's probe oracle) — the first probe line's switched fractions and residual
    equal its trace's last rows (mean and max over the phases)."""
    from test_train import rows, tiny

    from workbench import data
    from workbench.engine import models
    from workbench.data.loader import mix_seed
    from workbench.training.train import TrainConfig, run
    cfg = tiny(tmp_path, scheme="centered", beta=3.0, epochs=1,
               model_args={"widths": [16, 16]})
    run(cfg)
    seed = TrainConfig().seed            # tiny() leaves the seed at its default
    probe = next(r for r in rows(tmp_path / "run") if r["type"] == "probe")
    ds = data.build("synthetic", "test", image_size=8)
    gen = torch.Generator().manual_seed(mix_seed(seed, "probe"))
    idx = torch.randperm(64, generator=gen)[:16]
    x, y = ds.device_transform(ds.images[idx]), ds.labels[idx]
    torch.manual_seed(seed)
    net = models.build("mlp", num_classes=10, in_channels=3, image_size=8, widths=[16, 16])
    est = ep.estimate(net, x, y, scheme="centered", beta=3.0, iterations=4, diagnostics=True,
                      trace=False)
    want = torch.stack([p.switched[-1] for p in est.trace.phases]).mean(0)
    assert probe["switched"] == pytest.approx(want.tolist(), abs=1e-12)
    res = torch.stack([p.residual_max[-1] for p in est.trace.phases]).amax(0)
    assert probe["residual"] == pytest.approx(res.tolist(), rel=1e-6, abs=1e-12)
    assert max(probe["switched"]) > 0


def test_switched_counts_units_at_exactly_zero_as_off_and_are_float64():
    """Oracle: the definition (a unit is on where its pre-activation is > 0) recounted here on a
    float32 mlp whose biases are zero and half of whose inputs are exactly zero, so that many
    second-layer pre-activations are exactly 0 (off) — the trace's last row for layer 2 equals
    the recount from an explicit forward pass on the nudged states, is stored in float64, and
    is not zero (units do switch at this β). (Layer 1 reads the input, which never moves.)"""
    from workbench.engine import models
    torch.manual_seed(0)
    net = models.build("mlp", num_classes=5, in_channels=1, image_size=4, widths=(32, 16))
    x = torch.rand(6, 1, 4, 4)
    x[:3] = 0.0
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    free = free_phase(net, x, Precision.make("strict", torch.float32, x.device))
    phase = NudgedPhase(net, free, y, torch.full((6, 1), 3.0), "ce", "mod_pgd", "async")
    tr = phase.run(6, diagnostics=True)
    assert tr.switched.dtype == torch.float64
    assert float((free.a[2] == 0).double().mean()) >= 0.5     # the zero inputs: exactly 0
    a2 = net.layers[1].linear(phase.state(1)).detach()
    want = float(((a2 > 0) != (free.a[2] > 0)).double().mean())
    assert abs(float(tr.switched[-1, 1]) - want) < 1e-12 and want > 0
    assert float(tr.switched[-1, 0]) == 0


def test_diagnose_is_four_rows_per_layer_of_the_recounted_fractions():
    """Oracle: an explicit forward computation of the nudged pre-activations (as in the recount
    above) — on an mlp driven hard (MSE, β = 200, 20 iterations) units of the second hidden
    layer switch (the first layer's pre-activation is a function of the input alone, so it
    never does), and diagnose() returns exactly those fractions in a (4, L) float64 table
    (rows: switched, pool changes — none in an mlp —, residual max and RMS)."""
    from workbench.engine.diagnostics import diagnose
    net, x, y = small("mlp", seed=2)
    free = free_phase(net, x, Precision.make("strict", F64, x.device))
    phase = NudgedPhase(net, free, y, torch.full((x.shape[0], 1), 200.0, dtype=F64), "mse",
                        "mod_pgd", "async")
    phase.run(20)
    out = diagnose(phase)
    L = len(net.layers)
    assert out.shape == (4, L) and out.dtype == F64
    states = [phase.state(k) if k else free.h[0] for k in range(L + 1)]
    for k, layer in enumerate(net.layers, start=1):
        if layer.relu:
            a = pre_activation(net, k, states)
            frac = float(((a > 0) != (free.a[k] > 0)).double().mean())
            assert abs(float(out[0, k - 1]) - frac) < 1e-12, k
    assert float(out[0, 0]) == 0 and float(out[0, 1]) > 0
    assert float(out[1].abs().max()) == 0 and float(out[2].max()) > 0
