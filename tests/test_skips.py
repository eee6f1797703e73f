"""Skip connections inside the PCN energy (VGG10Skip, docs/method.md §4). Each test names its
oracle; everything in float64."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from plain import plain_iteration
from test_engine import small
from workbench.engine import ep, models
from workbench.engine.equilibrate import NudgedPhase, free_phase
from workbench.engine.precision import Precision

F64 = torch.float64


def _rel(net, x, y, scheme, beta, iterations=40, **kw):
    ref = ep.estimate(net, x, y, scheme="bp", accumulate=False, **kw).grads
    est = ep.estimate(net, x, y, scheme=scheme, beta=beta, iterations=iterations,
                      accumulate=False, **kw)
    return ep.compare(net, est.grads, ref)


@pytest.mark.parametrize("name", ["vgg10skip", "mlp-skip"])
def test_ep_with_skips_tends_to_backprop_with_the_expected_bias_order(name):
    """Oracle: backprop by autograd through the model's own forward pass (skips included) —
    per layer and per skip map: cosine ≥ 0.9999 at β = 1e-4 and the error's log–log slope
    between β = 3e-4 and 1e-4 is 1 (forward) and 2 (centered), ±0.05. (A batch where no
    ReLU or pooling choice switches under the nudge at these β: on these narrow nets some
    seeds switch a unit already at β = 1e-4, where the bias is no longer a power law.)"""
    net, x, y = small(name, seed=1)
    for scheme, order in (("forward", 1.0), ("centered", 2.0)):
        hi, lo = _rel(net, x, y, scheme, 3e-4), _rel(net, x, y, scheme, 1e-4)
        assert [r["kind"] for r in lo][-len(net.skips):] == ["skip"] * len(net.skips)
        assert min(r["cosine"] for r in lo) >= 0.9999, (scheme, lo)
        slopes = [math.log10(a["rel_error"] / b["rel_error"]) / math.log10(3)
                  for a, b in zip(hi, lo)]
        assert all(abs(s - order) < 0.05 for s in slopes), (scheme, slopes)


@pytest.mark.parametrize("name,order", [("vgg10skip", "async"), ("vgg10skip", "sync"),
                                        ("mlp-skip", "async")])
def test_deviation_form_with_skips_equals_the_plain_form(name, order):
    """Oracle: the nudged dynamics written plainly on full states (the energy with the skips,
    Δ_k by autograd, no deviations, nothing skipped): the engine's states h⁰ + d agree with it
    after every iteration, to 1e-12. Sources and targets 3 layers apart share a parity, so in
    the async order a source and its target's other input are updated in the same half-sweep
    from the same old states — the plain form does exactly that."""
    net, x, y = small(name, seed=4)
    prec = Precision.make("strict", F64, x.device)
    free = free_phase(net, x, prec)
    phase = NudgedPhase(net, free, y, torch.full((x.shape[0], 1), 0.3, dtype=F64), "ce",
                        "mod_pgd", order)
    states = [h.clone() for h in free.h]
    for _ in range(6):
        phase.step()
        states = plain_iteration(net, states, y, 0.3, "mod_pgd", phase.sweeps)
        for k in range(1, len(net.layers) + 1):
            assert torch.allclose(phase.state(k), states[k], rtol=0, atol=1e-12), k


def test_async_and_sync_reach_the_same_fixed_point_with_skips():
    """Oracle: the fixed-point equations of docs/method.md §2 do not depend on the order in
    which layers are updated — async (α = 1, the paper's), sync damped to α = 0.5 and async at
    α = 0.5, each run to convergence on vgg10skip (state change < 1e-15), reach the same nudged
    state: the same estimate to 1e-12. (Sync at α = 1 does not converge here: it oscillates,
    the paper's "does not work well".)"""
    net, x, y = small("vgg10skip", seed=1)
    ests = {}
    for order, alpha, k in (("async", 1.0, 200), ("sync", 0.5, 400), ("async", 0.5, 400)):
        ests[order, alpha] = est = ep.estimate(net, x, y, scheme="centered", beta=1e-3,
                                               iterations=k, order=order, step_size=alpha,
                                               accumulate=False)
        assert max(float(p.state_change[-1].max()) for p in est.trace.phases) < 1e-15
    for key, est in ests.items():
        assert ep.relative_error(est.grads, ests["async", 1.0].grads) < 1e-12, key


def test_skips_with_clamping_step_size_and_every_scheme():
    """Oracles: the closed form (α = 1 bit-identical to the default), the α = 1 fixed point
    (α = 0.5 converged gives the same estimate) and finiteness under clamping, on vgg10skip."""
    net, x, y = small("vgg10skip", seed=1)
    base = dict(beta=1e-3, accumulate=False)
    one = ep.estimate(net, x, y, scheme="centered", iterations=150, **base).grads
    half = ep.estimate(net, x, y, scheme="centered", iterations=300, step_size=0.5,
                       **base).grads
    assert ep.relative_error(half, one) < 1e-9
    for scheme in ep.SCHEMES:
        g = ep.estimate(net, x, y, scheme=scheme, iterations=10, perturbation="clamp",
                        **base).grads
        assert all(torch.isfinite(v).all() for v in g.values()), scheme
        assert float(g["skips.0.weight"].norm()) > 0, scheme


def test_vgg10skip_full_size_parameters():
    """Oracle: the architecture — VGG10 (62,651,752 parameters at 224×224, 1000 classes) plus
    two strided 1×1 convolutions with bias, 128→512 (65,536 + 512) and 512→512 (262,144 + 512):
    62,980,456; strides 2 (56 → 28 and 28 → 14)."""
    net = models.build("vgg10skip", num_classes=1000, in_channels=3)
    assert sum(p.numel() for p in net.parameters()) == 62_980_456
    assert [(s.src, s.dst, s.stride, tuple(s.weight.shape)) for s in net.skips] == \
        [(2, 5, 2, (512, 128, 1, 1)), (5, 8, 2, (512, 512, 1, 1))]
    c = math.sqrt(1 / 512)                                 # fan_out = 512·1·1, as VGG10's convs
    assert all(0.95 * c <= float(s.weight.detach().abs().max()) <= c for s in net.skips)


@pytest.mark.parametrize("model,skips,match", [
    ("vgg10", ((5, 2),), r"skip \(5, 2\) must go forward"),
    ("vgg10", ((2, 11),), r"0 <= src < dst <= 10"),
    ("vgg10", ((3, 4),), r"joins neighbouring layers"),
    ("vgg10", ((9, 10), (2, 9)), r"skip \(9, 10\) joins neighbouring layers"),
    ("vgg10", ((2, 5), (2, 5)), r"skip \(2, 5\) is given twice"),
    ("vgg5", ((2, 2),), r"must go forward"),
    ("mlp", ("ab",), r"pairs of layer indices"),
])
def test_impossible_skips_are_refused_naming_layers_and_shapes(model, skips, match):
    """Oracle: the rules for a pair — forward, within the model, not neighbours, once, given as
    two integers — each refused naming the layers. (A target map that no whole stride reaches
    is refused too, naming both shapes; with 2×2 pools halving every map, no forward pair of
    these models has one.)"""
    kw = dict(channels=(4, 4, 6, 6, 8, 8, 8, 8), dense=16) if model == "vgg10" else \
        dict(channels=(4, 6, 8, 8, 8)) if model == "vgg5" else dict(widths=(8, 8))
    with pytest.raises(ValueError, match=match):
        models.build(model, num_classes=5, in_channels=3, image_size=32, skips=skips, **kw)


def test_gradcheck_runs_on_vgg10skip():
    """Oracle: ep.compare on the same batch — `workbench gradcheck --model vgg10skip` (narrow,
    32 px) reports every layer and both skip maps with cosine ≥ 0.9999 at β = 1e-4."""
    out = subprocess.run(
        [sys.executable, "-m", "workbench", "gradcheck", "--model", "vgg10skip", "--image-size",
         "32", "--in-channels", "3", "--model-arg", "channels=[4,4,6,6,8,8,8,8]", "--model-arg",
         "dense=16", "--beta", "1e-4", "--iterations", "20", "--batch-size", "4", "--json"],
        capture_output=True, text=True, check=True)
    rows = json.loads(out.stdout)["layers"]
    assert [r["layer"] for r in rows][-2:] == ["2→5", "5→8"]
    assert min(r["cosine"] for r in rows) >= 0.9999


def test_training_bench_and_explorers_run_with_skips(tmp_path):
    """Oracles: the run folder's checkpoint holds the skip parameters and the loss falls
    (training); bench's fidelity rows include the skip maps and strict mode matches float64
    there (bench); the explorers' per-layer rows are ep.compare's, skip rows included."""
    from workbench import bench, widgets
    from workbench.training.train import run
    cfg = dict(dataset="synthetic", image_size=8, model="mlp",
               model_args={"widths": [16, 16], "skips": [[0, 2]]}, epochs=2,
               batch_size=32, limit_train=128, limit_test=64, lr=0.05, beta=0.05,
               iterations=4, probe_every=0, device="cpu", progress="none",
               run_dir=str(tmp_path / "run"))
    summary = run(cfg)
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["model"]
    assert {"skips.0.weight", "skips.0.bias"} <= set(state)
    lines = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert lines[-1]["train_loss"] < lines[0]["train_loss"] and summary["status"] == "completed"
    net, x, y = bench.make_batch("vgg10skip", 32, 3, 5, 4, torch.device("cpu"),
                                 channels=(4, 4, 6, 6, 8, 8, 8, 8), dense=16)
    res = bench.fidelity(net, x, y, ["centered"], betas=(0.005,), iterations=6)
    cos = res["betas"]["0.005"]["centered"]["strict"]["cosine"]
    assert len(cos) == 12 and min(cos) >= 0.9999
    skip_net, _, _ = small("mlp-skip")
    data = widgets.synthetic_data(16, 1, 8, num_classes=5)
    ex = widgets.GradientBiasExplorer({"skip": skip_net}, data, batch_size=8,
                                      schemes=("centered",), betas=(1e-3, 1e-2),
                                      iterations_sweep=(2, 4))
    rows = ex.rows("centered")
    assert [r["layer"] for r in rows][-2:] == ["0→2", "1→4"]
    widgets.EnergyExplorer({"skip": skip_net}, data, batch_size=8, iterations=3)


def test_a_strided_skips_transpose_and_gradients_are_autograds_on_any_map_shape():
    """Oracle: autograd of the skip's own forward map ``S(h) = conv1x1(h, stride) + b`` — its
    transposed map ``Sᵀ g`` and its gradients ``(Σ g ⊗ h, Σ g)`` equal the VJPs by autograd, on
    source maps whose height and width differ and are odd or even (so the stride drops a
    different remainder in each), with strides 1, 2 and 3."""
    g = torch.Generator().manual_seed(0)
    for (height, width), stride in (((7, 8), 2), ((8, 7), 2), ((9, 10), 3), ((5, 6), 1)):
        skip = models.SkipLayer(1, 3, 4, 6, spatial=True, stride=stride,
                                src_shape=(4, height, width)).double()
        h = torch.randn(2, 4, height, width, generator=g, dtype=torch.float64,
                        requires_grad=True)
        out = skip.linear_with(h, skip.weight, skip.bias)
        up = torch.randn(out.shape, generator=g, dtype=torch.float64)
        want_h, want_w, want_b = torch.autograd.grad(out, (h, skip.weight, skip.bias), up)
        got_h = skip.transpose_with(up, skip.weight)
        assert got_h.shape == h.shape and torch.allclose(got_h, want_h, rtol=1e-12), \
            ((height, width), stride)
        got_w, got_b = skip.grads_with(h.detach(), up, skip.weight)
        assert torch.allclose(got_w, want_w, rtol=1e-12) and torch.allclose(got_b, want_b)


def test_the_wiring_names_the_input_node_and_which_edges_are_chains():
    """Oracle: the docstrings of workbench.engine.wiring — node 0 is the input: identity, no
    pooling, no edge into it, and out of it the first layer's chain edge and every skip from the
    input; the chain edges 1..L come first (``chain`` True), then the skips (``chain`` False),
    each summed into its target after the chain edge."""
    net, _, _ = small("mlp-skip")                       # skips (0, 2) and (1, 4), L = 4
    w = net.wiring
    assert [(e.src, e.dst, e.chain) for e in w.edges] == [
        (0, 1, True), (1, 2, True), (2, 3, True), (3, 4, True), (0, 2, False), (1, 4, False)]
    n0 = w.nodes[0]
    assert (n0.activation, n0.pool, n0.into, n0.out, n0.relu) == ("identity", False, (), (0, 4),
                                                                  False)
    assert [(n.into, n.out) for n in w.nodes[1:]] == [((0,), (1, 5)), ((1, 4), (2,)),
                                                      ((2,), (3,)), ((3, 5), ())]
