"""Headless tests of the explorers in workbench.widgets: set controls, read the figures' data."""
import copy
import math

import numpy as np
import pytest
import torch

from workbench import data, widgets
from workbench.engine import ep, models


@pytest.fixture
def engine_calls(monkeypatch):
    """Counts calls into the engine's ``ep.estimate`` made by the widgets."""
    calls = []
    real = ep.estimate

    def counting(*args, **kw):
        calls.append(kw.get("scheme", args[3] if len(args) > 3 else None))
        return real(*args, **kw)

    monkeypatch.setattr(ep, "estimate", counting)
    return calls


def small_mlp():
    torch.manual_seed(1)
    return models.build("mlp", widths=(32, 16))


def oracle_estimate(net, batch, scheme, beta, iterations, update="mod_pgd", order="async",
                    batch_size=8):
    """The engine called directly on a float64 copy of ``net`` and the same pool slice."""
    x, y = widgets.synthetic_data()
    sl = slice(batch * batch_size, (batch + 1) * batch_size)
    return ep.estimate(copy.deepcopy(net).double(), x[sl].double(), y[sl], scheme=scheme,
                       beta=beta, iterations=iterations, update=update, order=order,
                       accumulate=False)


def ys(fig, name):
    (trace,) = [t for t in fig.data if t.name == name]
    return np.array([np.nan if v is None else v for v in trace.y], dtype=float)


def test_energy_explorer_figures_match_engine_trace():
    """oracle: the figures show exactly the engine's own trace for the settings on the controls
    (ep.estimate called directly on the same model and batch)."""
    net = small_mlp()
    ex = widgets.EnergyExplorer({"m": net}, batch_size=8)
    ex.controls["batch"].value = 2
    ex.controls["beta"].value = 0.01
    ex.controls["iterations"].value = 7
    ex.controls["update"].value = "pgd"
    ex.controls["order"].value = "sync"
    ex.controls["phase"].value = 1
    ref = oracle_estimate(net, 2, "centered", 0.01, 7, "pgd", "sync")
    energy = ex.figures["energy"]
    for name, ph in zip(("+β", "−β"), ref.trace.phases):
        assert ph.energy.shape[0] == 8
        np.testing.assert_allclose(ys(energy, f"F {name}"), ph.total.numpy(), rtol=1e-12)
        np.testing.assert_allclose(ys(energy, f"C {name}"), ph.cost.numpy(), rtol=1e-12)
        e = ph.energy.sum(1).numpy()
        np.testing.assert_allclose(ys(energy, f"E {name}"), np.where(e > 0, e, np.nan),
                                   rtol=1e-12)
    minus = ref.trace.phases[1]
    (heat,) = ex.figures["heatmap"].data
    z = np.array([[np.nan if v is None else v for v in row] for row in heat.z])
    with np.errstate(divide="ignore"):
        want = np.log10(minus.energy.numpy().T)
    np.testing.assert_allclose(z, np.where(np.isfinite(want), want, np.nan), rtol=1e-12)
    for k in (1, 2, 3):
        change = minus.state_change[:, k - 1].numpy()
        np.testing.assert_allclose(ys(ex.figures["change"], f"layer {k}"),
                                   np.where(change > 0, change, np.nan), rtol=1e-12)


def test_energy_explorer_recomputes_only_what_changed(engine_calls):
    """oracle: counted engine calls — view-only controls and earlier settings cost none; every
    setting that determines the estimate costs exactly one."""
    ex = widgets.EnergyExplorer({"m": small_mlp()}, batch_size=8)
    assert len(engine_calls) == 1
    before = [t.y for t in ex.figures["change"].data]
    ex.controls["layers"].value = (2,)
    ex.controls["phase"].value = 1
    assert len(engine_calls) == 1
    assert [t.name for t in ex.figures["change"].data] == ["layer 2"]
    assert ex.figures["change"].data[0].y != before[1]
    ex.controls["beta"].value = 0.2
    assert len(engine_calls) == 2
    ex.controls["beta"].value = 0.05
    ex.controls["scheme"].value = "random"
    ex.controls["scheme"].value = "centered"
    assert engine_calls == ["centered", "centered", "random"]
    assert [o[0] for o in ex.controls["phase"].options] == ["+β", "−β"]


def test_energy_explorer_switches_model_and_phases():
    """oracle: the new model's layer count (heat-map rows, layer choices) and each scheme's
    phases (forward: +β only, backward: −β only, as in ep.estimate)."""
    ex = widgets.EnergyExplorer(batch_size=8)
    ex.controls["model"].value = "mlp 6×64"
    assert len(ex.figures["heatmap"].data[0].y) == 7
    assert [v for _, v in ex.controls["layers"].options] == list(range(1, 8))
    assert len(ex.figures["change"].data) == 7
    ex.controls["scheme"].value = "backward"
    assert [t.name for t in ex.figures["energy"].data] == ["F −β", "E −β", "C −β"]
    assert ex.figures["energy"].data[0].y[-1] < 0 < ex.figures["energy"].data[2].y[-1]


def test_bias_explorer_per_layer_bars_match_compare():
    """oracle: ep.compare of the engine's estimate against the engine's BP gradient."""
    net = small_mlp()
    ex = widgets.GradientBiasExplorer({"m": net}, batch_size=8, beta=0.1, iterations=6,
                                      betas=(0.01, 0.1), iterations_sweep=(2, 6))
    ref = oracle_estimate(net, 0, "bp", 0, 0)
    bars = {t.name: t for t in ex.figures["layers"].data if t.yaxis == "y"}
    assert list(bars) == ["forward", "backward", "centered", "random"]
    for scheme in ("forward", "centered"):
        est = oracle_estimate(net, 0, scheme, 0.1, 6)
        rows = ep.compare(copy.deepcopy(net).double(), est.grads, ref.grads)
        np.testing.assert_allclose(bars[scheme].y, [r["cosine"] for r in rows], rtol=1e-10)
        rel = [t for t in ex.figures["layers"].data if t.yaxis == "y2" and t.name == scheme][0]
        np.testing.assert_allclose(rel.y, [r["rel_error"] for r in rows], rtol=1e-10)
        k_curve = [t for t in ex.figures["iterations"].data if t.name == scheme][0]
        assert k_curve.y[1] == pytest.approx(widgets.relative_error(est.grads, ref.grads),
                                             rel=1e-10)


def test_bias_slopes_one_sided_first_order_centered_second_order(engine_calls):
    """oracle: docs/method.md §3 — at an exact nudged equilibrium, below the first ReLU switch, the
    one-sided bias is O(β) and the centered bias O(β²): log–log slopes ≈ 1 and ≈ 2; the fitted
    line is np.polyfit's over β ≤ the fit control; moving that control recomputes nothing."""
    ex = widgets.GradientBiasExplorer({"m": small_mlp()}, batch_size=16, iterations=40,
                                      schemes=("forward", "backward", "centered"),
                                      betas=(1e-4, 3e-4, 1e-3, 0.1), iterations_sweep=(40,))
    assert ex.controls["fit"].value == 1e-3
    assert ex.slopes["forward"] == pytest.approx(1.0, abs=0.05)
    assert ex.slopes["backward"] == pytest.approx(1.0, abs=0.05)
    assert ex.slopes["centered"] == pytest.approx(2.0, abs=0.05)
    points = [t for t in ex.figures["beta"].data if t.name.startswith("centered (")][0]
    fit = [t for t in ex.figures["beta"].data if t.name == "centered fit"][0]
    line = np.polyfit(np.log10(points.x[:3]), np.log10(points.y[:3]), 1)
    assert line[0] == pytest.approx(ex.slopes["centered"], rel=1e-12)
    np.testing.assert_allclose(np.log10(fit.y), np.polyval(line, np.log10(points.x[:3])))
    assert f"slope {ex.slopes['centered']:.2f}" in points.name
    n = len(engine_calls)
    ex.controls["fit"].value = 0.1
    assert len(engine_calls) == n
    assert ex.slopes["centered"] == pytest.approx(widgets.log_slope(points.x, points.y))
    assert len([t for t in ex.figures["beta"].data if t.name == "centered fit"][0].x) == 4


def test_bias_explorer_layer_view_costs_no_engine_calls(engine_calls):
    """oracle: counted engine calls (the layer selector is view-only) and relative_error of that
    layer computed from the cached estimates."""
    ex = widgets.GradientBiasExplorer({"m": small_mlp()}, batch_size=8, schemes=("centered",),
                                      betas=(0.01, 0.1), iterations_sweep=(4, 8))
    n = len(engine_calls)
    # BP, the current point, the converged estimate (the bias/truncation split), the β sweep,
    # the K sweep
    assert n == 1 + 1 + 1 + 2 + 2
    ex.controls["layer"].value = 2
    ex.controls["schemes"].value = ("centered",)
    assert len(engine_calls) == n
    est = ex.lab.estimate("m", 0, "centered", 0.1, ex.controls["iterations"].value)
    ref = ex.lab.estimate("m", 0, "bp")
    point = [t for t in ex.figures["beta"].data if t.name.startswith("centered (")][0]
    assert point.y[1] == pytest.approx(widgets.relative_error(est.grads, ref.grads, 2))
    assert "layer 2" in ex.figures["beta"].layout.title.text
    ex.controls["iterations"].value = 8
    # the new current point is the K sweep's; 2 new β points; the converged one is cached
    assert len(engine_calls) == n + 2


def test_explorer_defaults_pad_images_for_vgg5():
    """oracle: fit_input zero-pads 28×28 to 32×32 (MNIST convention); vgg5 gives finite traces."""
    x = torch.ones(2, 1, 28, 28)
    padded = widgets.fit_input(x, (1, 32, 32))
    assert padded.shape == (2, 1, 32, 32) and padded.sum() == x.sum()
    assert padded[..., :2, :].abs().sum() == 0
    ex = widgets.EnergyExplorer(batch_size=4, iterations=3)
    ex.controls["model"].value = "vgg5 tiny"
    assert all(math.isfinite(v) for v in ex.figures["energy"].data[0].y)


def test_bad_inputs_raise_clear_errors():
    """oracle: ValueErrors that name what was wrong and what is accepted."""
    with pytest.raises(ValueError, match="accepted: forward, backward"):
        widgets.GradientBiasExplorer(schemes=("central",))
    with pytest.raises(ValueError, match="at least two values"):
        widgets.GradientBiasExplorer(betas=(0.1,))
    with pytest.raises(ValueError, match="may only be zero-padded"):
        widgets.fit_input(torch.zeros(1, 3, 28, 28), (1, 32, 32))
    with pytest.raises(ValueError, match="same number"):
        widgets.Lab(data=(torch.zeros(4, 1, 28, 28), torch.zeros(3, dtype=torch.long)))
    lab = widgets.Lab(batch_size=16)
    with pytest.raises(ValueError, match=r"batch index must lie in \[0, 4\)"):
        lab.batch("mlp 128-64", 4)
    with pytest.raises(ValueError, match="accepted: forward, backward, centered, random"):
        widgets.EnergyExplorer(scheme="bp")
    with pytest.raises(ValueError, match="beta must be a finite number > 0"):
        widgets.EnergyExplorer(beta=0.0)


def test_sliders_hold_the_values_asked_for():
    """oracle: the constructor's arguments — β and K outside the sliders' default ranges are
    shown and used as given (a slider would otherwise clamp them silently)."""
    ex = widgets.EnergyExplorer(beta=5e-6, iterations=100)
    assert ex.controls["beta"].value == pytest.approx(5e-6)
    assert ex.controls["iterations"].value == 100


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A finished two-epoch training run (synthetic 3×8×8 images, mlp 16) and its metric rows as
    the callback saw them."""
    from workbench.training.train import run
    run_dir = tmp_path_factory.mktemp("run") / "tiny"
    rows = []
    run(dict(dataset="synthetic", image_size=8, model="mlp", model_args={"widths": [16]},
             epochs=2, batch_size=32, limit_train=64, limit_test=32, probe_every=1,
             probe_size=8, device="cpu", progress="none", run_dir=str(run_dir)),
        callback=rows.append)
    return run_dir, rows


def test_training_monitor_plots_every_metrics_row(tiny_run):
    """oracle: the rows the training loop passed to the callback and wrote to metrics.jsonl."""
    run_dir, rows = tiny_run
    live = widgets.TrainingMonitor()
    for row in rows:
        live(row)
    epochs = [r for r in rows if r["type"] == "epoch"]
    probes = [r for r in rows if r["type"] == "probe"]
    assert len(epochs) == 2 and len(probes) == 5   # step 0, then after each of 4 steps
    for monitor in (live, widgets.TrainingMonitor.from_run(run_dir)):
        by_name = {t.name: t for t in monitor.figure.data}
        assert by_name["train loss"].x == (1, 2)
        assert list(by_name["test top-1 error"].y) == [r["test_top1_error"] for r in epochs]
        assert list(by_name["test loss"].y) == [r["test_loss"] for r in epochs]
        assert list(by_name["layer 2"].x) == [r["step"] for r in probes]
        assert list(by_name["layer 1"].y) == [r["cosine"][0] for r in probes]
    assert "epoch 2" in live.status.value
    with pytest.raises(ValueError, match="not a training run folder"):
        widgets.TrainingMonitor.from_run(run_dir / "missing")


def test_explorers_from_checkpoint_use_the_trained_weights(tiny_run):
    """oracle: the checkpoint's own state dict and the run's config (β, K, cost, test images)."""
    run_dir, _ = tiny_run
    ex = widgets.EnergyExplorer.from_checkpoint(str(run_dir), batch_size=8)
    (name,) = ex.lab.models
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"]
    for key, value in ex.lab.models[name].state_dict().items():
        torch.testing.assert_close(value, state[key].double())
    assert ex.settings["beta"] == 0.02 and ex.settings["iterations"] == 5
    test = data.build("synthetic", "test", image_size=8)
    x, y = test.batch(torch.arange(256))
    torch.testing.assert_close(ex.lab.x, test.device_transform(x))
    assert torch.equal(ex.lab.y, y)
    bias = widgets.GradientBiasExplorer.from_checkpoint(str(run_dir), batch_size=8, beta=0.01,
                                                        betas=(0.01, 0.1), iterations_sweep=(5,))
    assert bias.settings["beta"] == 0.01
    with pytest.raises(ValueError, match="checkpoint.pt missing"):
        (run_dir.parent / "empty").mkdir()
        widgets.load_run(str(run_dir.parent / "empty"))


def test_bias_explorer_shows_clamping_beside_nudging():
    """Oracle: backprop of the squared error — with the perturbation control on clamp the
    explorer's error against BP stays large at small β (clamping is not a gradient, paper
    §3.2), while nudging's vanishes."""
    ex = widgets.GradientBiasExplorer({"m": small_mlp()}, batch_size=8, cost="mse",
                                      schemes=("centered",), beta=1e-4, iterations=40,
                                      betas=(1e-4, 1e-3), iterations_sweep=(40,))
    nudge = ex.error("centered")
    ex.controls["perturbation"].value = "clamp"
    clamp = ex.error("centered")
    assert nudge < 1e-3 and clamp > 0.05, (nudge, clamp)
