"""The fast path's precision-independent logic, on CPU. Each test names its oracle.

The GPU half (bf16 tensor cores, speed, the fidelity rule at VGG10 scale) is `bench/gpu_check.sh`.
"""
from __future__ import annotations

import collections
import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from workbench.engine import energy, ep, kernels, models
from workbench.engine import precision as eq
from workbench.engine.equilibrate import NudgedPhase, free_phase
from workbench.engine.layers import LayerMap
from workbench.engine.precision import Precision
from plain import plain_iteration
from test_engine import small as small64

F64 = torch.float64

def small(name, seed=0, batch=4, classes=5, dtype=F64):
    """test_engine's small models and batches, in ``dtype``."""
    net, x, y = small64(name, seed=seed, batch=batch, classes=classes)
    return net.to(dtype), x.to(dtype), y


def make_phase(net, x, y, beta, precision, update="mod_pgd", order="async"):
    free = free_phase(net, x, precision)
    b = torch.full((x.shape[0], 1), beta, dtype=precision.state)
    return NudgedPhase(net, free, y, b, "ce", update, order), free


# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["vgg5", "vgg10", "vgg10skip"])
def test_fast_plumbing_in_float64_equals_strict(name, monkeypatch):
    """Oracle: the strict float64 estimate. The fast path — its casts between state and compute
    dtypes and its channels_last layout — run with float64 as the 'low' dtype gives the same
    estimate (to 1e-12), for every scheme."""
    net, x, y = small(name)
    fast64 = Precision("fast", F64, F64, F64, F64, channels_last=True)
    make = Precision.make
    monkeypatch.setattr(Precision, "make", staticmethod(
        lambda p, dtype, device, **kw: fast64 if p == "fast" else make(p, dtype, device, **kw)))
    op = net.layers[0].map(Precision.make("fast", F64, x.device), "layers.0")
    assert op.weight.is_contiguous(memory_format=torch.channels_last)
    signs = torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=F64)
    for scheme in ep.SCHEMES:
        kw = dict(scheme=scheme, beta=0.05, iterations=6, accumulate=False,
                  signs=signs if scheme == "random" else "example")
        strict = ep.estimate(net, x, y, precision="strict", **kw)
        fast = ep.estimate(net, x, y, precision="fast", **kw)
        for n in strict.grads:
            assert torch.allclose(fast.grads[n], strict.grads[n], rtol=1e-10, atol=1e-12), n
        for a, b in zip(strict.trace.phases, fast.trace.phases):
            assert torch.allclose(a.energy, b.energy, rtol=1e-10, atol=1e-14)


def plain_step(net, states, y, beta, update, sweeps):
    """One iteration of docs/method.md §2 on full states (tests/plain.py)."""
    return plain_iteration(net, states, y, beta, update, sweeps)


@pytest.mark.parametrize("name,update,order", [
    ("vgg5", "mod_pgd", "async"), ("vgg10", "pgd", "async"), ("mlp", "mod_pgd", "async"),
    ("mlp", "pgd", "async"), ("vgg10", "pgd", "sync"), ("vgg5", "mod_pgd", "sync")])
def test_deviation_form_equals_plain_form_states(name, update, order):
    """Oracle: the nudged dynamics written plainly on full states h (workbench.engine.energy's E,
    Δ_k by autograd, no deviations, nothing skipped) — the engine's states h⁰ + d agree with it
    after every iteration, to 1e-12 in float64."""
    net, x, y = small(name, seed=4)
    beta = 0.3
    phase, free = make_phase(net, x, y, beta, Precision.make("strict", F64, x.device), update,
                             order)
    states = [h.clone() for h in free.h]
    for _ in range(6):
        phase.step()
        states = plain_step(net, states, y, beta, update, phase.sweeps)
        for k in range(1, len(net.layers) + 1):
            assert torch.allclose(phase.state(k), states[k], rtol=0, atol=1e-12), k


def test_skipping_zero_deviations_changes_nothing(monkeypatch):
    """Oracle: the same phase with every deviation held as an explicit zero tensor, so that
    nothing is skipped — identical states and parameter gradients; and skipping really does
    fewer convolutions and transposed convolutions (VGG10, K=3: the nudge has not reached the
    lowest layers yet)."""
    net, x, y = small("vgg10")
    prec = Precision.make("strict", F64, x.device)
    calls = {"apply": 0, "transpose": 0}

    def counting(name):
        real = getattr(LayerMap, name)

        def wrapper(self, *a, **kw):
            calls[name] += 1
            return real(self, *a, **kw)
        return wrapper

    for name in calls:
        monkeypatch.setattr(LayerMap, name, counting(name))
    results = []
    for explicit in (False, True):
        calls.update(apply=0, transpose=0)
        phase, free = make_phase(net, x, y, 0.05, prec)
        if explicit:
            phase.hold_zeros()
            assert all(phase.deviation(k) is not None for k in range(1, len(free.h)))
        for _ in range(3):
            phase.step()
        weight = torch.full((x.shape[0],), 1 / 0.05, dtype=F64)
        results.append(([phase.state(k) for k in range(len(free.h))], phase.param_grads(weight),
                        dict(calls)))
    (s_skip, g_skip, c_skip), (s_full, g_full, c_full) = results
    for a, b in zip(s_skip, s_full):
        assert torch.equal(a, b)
    assert set(g_full) == {n for n, _ in net.named_parameters()}
    for name, g in g_full.items():
        assert torch.allclose(g, g_skip.get(name, torch.zeros_like(g)), atol=1e-15), name
    assert "layers.0.weight" not in g_skip     # the lowest layer's error is still exactly zero
    assert c_skip["apply"] < c_full["apply"] and c_skip["transpose"] < c_full["transpose"]


@pytest.mark.parametrize("name", ["vgg5", "vgg10skip"])
def test_bf16_fast_mode_is_faithful_to_float64(name):
    """Oracles: a float64 run of the same estimator (same β, K, weights, batch), beside BP in
    bf16 against float64 BP (the fidelity rule, docs/method.md §7), and the fp32 forward pass.
    Fast mode on CPU computes the free state in fp32 (equal to the forward pass) and the
    deviations' convolutions in bf16: every layer's (and skip map's) cosine is ≥ 0.999 at
    β = 0.05 and 0.0005 (the plain form scored 0.0–0.7 in bf16, docs/method.md §7; bf16 BP
    scores 0.96–0.999 here) and the rule holds."""
    from workbench import bench

    net, x, y = small(name, seed=1, batch=8, dtype=torch.float32)
    est = ep.estimate(net, x, y, scheme="forward", beta=0.05, iterations=2, precision="fast")
    assert torch.equal(est.logits, net(x))
    res = bench.fidelity(net, x, y, ["centered", "forward"], precisions=["fast"],
                         betas=(0.05, 0.0005), iterations=6)
    bp = res["bp"]["fast"]
    assert all(0.8 < c < 1 - 1e-7 for c in bp[:4]), bp                 # BP really rounded
    for beta, rows in res["betas"].items():
        for scheme, by_precision in rows.items():
            row = by_precision["fast"]
            assert min(row["cosine"]) >= 0.999, (beta, scheme, row["cosine"])
            assert row["pass"], (beta, scheme, row["margin"])


def test_strict_mode_never_leaves_tf32_on(monkeypatch):
    """Oracle: the backend switches as seen from inside every engine op and BP's forward pass:
    IEEE fp32 throughout a strict estimate, whatever they were before; restored afterwards, also
    when the estimate raises; fast mode runs its free phase in IEEE fp32 (Precision.free_ieee)
    and leaves the nudged phases' switches alone."""
    switches = eq.fp32_switches()
    if not switches:
        pytest.skip("torch < 2.9 has no fp32_precision switches (legacy CUDA flags only)")
    seen = []

    def spy(name):
        real = getattr(LayerMap, name)

        def wrapper(self, *a, **kw):
            seen.append((kw.get("free", False), eq.fp32_math()))
            return real(self, *a, **kw)
        return wrapper

    for name in ("apply", "transpose", "param_grads"):
        monkeypatch.setattr(LayerMap, name, spy(name))
    net, x, y = small("vgg5", dtype=torch.float32)
    net.layers[2].register_forward_hook(lambda *_: seen.append((False, eq.fp32_math())))
    saved = {name: m.fp32_precision for name, m in switches.items()}
    try:
        for m in switches.values():
            m.fp32_precision = "tf32"
        before = eq.fp32_math()
        for scheme in ("centered", "bp"):
            seen.clear()
            ep.estimate(net, x, y, scheme=scheme, beta=0.05, iterations=3, precision="strict")
            assert seen and all(set(s.values()) == {"ieee"} for _, s in seen), scheme
            assert eq.fp32_math() == before
        seen.clear()
        ep.estimate(net, x, y, scheme="forward", beta=0.05, iterations=2, precision="fast")
        assert any(free for free, _ in seen) and any(not free for free, _ in seen)
        assert all(set(s.values()) == {"ieee"} if free else s == before for free, s in seen)

        def boom(self, *a, **kw):
            raise RuntimeError("boom")
        monkeypatch.setattr(LayerMap, "transpose", boom)
        with pytest.raises(RuntimeError, match="boom"):
            ep.estimate(net, x, y, scheme="forward", beta=0.05, iterations=2)
        assert eq.fp32_math() == before
    finally:
        for name, m in switches.items():
            m.fp32_precision = saved[name]


def test_trace_off_measures_only_the_last_iteration(monkeypatch):
    """Oracle: the traced run of the same phase — with tracing off the state change is measured
    once (the last iteration's row, equal to the traced run's last row) and no value is read
    back from the tensors inside the K-loop (Tensor.item / tolist / __float__ / __bool__ are
    never called)."""
    net, x, y = small("vgg5")
    kw = dict(scheme="forward", beta=0.05, iterations=5, accumulate=False)
    traced = ep.estimate(net, x, y, **kw).trace.phases[0]
    measured = []
    real_step = NudgedPhase.step

    def step(self, measure=True):
        measured.append(measure)
        return real_step(self, measure)
    monkeypatch.setattr(NudgedPhase, "step", step)
    reads = []
    for name in ("__float__", "item", "tolist", "__bool__"):
        real = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name,
                            lambda t, *a, _real=real: reads.append(len(measured)) or _real(t, *a))
    quiet = ep.estimate(net, x, y, trace=False, **kw).trace.phases[0]
    assert measured == [False] * 4 + [True]
    assert all(n in (0, 5) for n in reads)     # reads only before and after the loop
    assert quiet.state_change.shape == (1, len(net.layers))
    assert torch.equal(quiet.state_change[0], traced.state_change[-1])
    assert torch.equal(quiet.energy[0], traced.energy[-1])


def test_relu_shift_is_exact_for_units_that_stay_on_or_switch_off():
    """Oracle: the definition relu(c + s) − relu(c), evaluated in float64 — and bit-exactness in
    float32 where the unit stays active (result s) or switches off (result −c), which is what
    keeps O(1) rounding out of O(β) deviations."""
    g = torch.Generator().manual_seed(0)
    c = torch.randn(10_000, generator=g)
    s = torch.randn(10_000, generator=g) * 10.0 ** torch.randint(-9, 1, (10_000,), generator=g)
    got = kernels.relu_shift(c, s)
    want = torch.relu(c.double() + s.double()) - torch.relu(c.double())
    assert torch.allclose(got.double(), want, rtol=1e-6, atol=1e-7)
    on, off = (c > 0) & (c + s > 0), (c > 0) & (c + s <= 0)
    assert on.sum() > 1000 and off.sum() > 100
    assert torch.equal(got[on], s[on]) and torch.equal(got[off], -c[off])


def test_strict_fp32_matches_float64_where_the_nudge_is_still_tiny():
    """Oracle: a float64 run of the same estimator. With K = 6 on a 10-layer net the nudge has
    only just reached the lowest layers, whose deviations are far below fp32's resolution of
    the O(1) states; strict fp32 still gives cosine ≥ 0.9999 on every layer (forming
    relu(a + Δ) − h⁰ and max-pooling z⁰ + W d directly gave 0.980 on layer 1 here)."""
    from workbench import bench

    net, x, y = small("vgg10", seed=0, batch=4, classes=10, dtype=torch.float32)
    res = bench.fidelity(net, x, y, ["centered", "random"], betas=(0.005,), iterations=6)
    for scheme, row in res["betas"]["0.005"].items():
        assert min(row["strict"]["cosine"]) >= 0.9999, (scheme, row["strict"]["cosine"])


def _window_case():
    g = torch.Generator().manual_seed(0)
    z = torch.randint(-2, 3, (3, 5, 6, 8), generator=g).double()
    z[0, 0, 0, 1] = float("nan")
    zc = torch.zeros_like(z).to(memory_format=torch.channels_last)
    want, idx = F.max_pool2d(z, 2, 2, return_indices=True)
    v = torch.randn(want.shape, generator=g, dtype=F64)
    return z, zc, want, idx, v


def _check_window_codes(pool, unpool):
    z, zc, want, idx, v = _window_case()
    m, code = pool(zc, z)
    assert code.dtype == torch.uint8 and torch.equal(m.isnan(), want.isnan())
    assert torch.equal(m.nan_to_num(7), want.nan_to_num(7))
    assert m.is_contiguous(memory_format=torch.channels_last)
    ys, xs = code.long() // 2, code.long() % 2
    rows = torch.arange(3).view(1, 1, 3, 1) * 2 + ys
    cols = torch.arange(4).view(1, 1, 1, 4) * 2 + xs
    assert torch.equal(rows * 8 + cols, idx)
    assert torch.equal(unpool(v, code), F.max_unpool2d(v, idx, 2, 2, output_size=(6, 8)))


def test_window_codes_pool_and_unpool_like_max_pool2d():
    """Oracle: F.max_pool2d / F.max_unpool2d. The fused path's pointwise pooling (run eagerly
    here) gives the same maxima and selects the same element — the first maximum of each 2×2
    window in row-major order on ties (integer-valued maps are full of them), a NaN wherever
    max_pool2d picks one — and its unpooling places values where max_unpool2d does; the fused
    drive equals the eager pieces it fuses (ReLU drive, per-example scale, unpooling, cast and
    layout)."""
    _check_window_codes(kernels.pool_window, kernels.unpool_window)
    g = torch.Generator().manual_seed(1)
    a0 = torch.randn(3, 5, 3, 4, generator=g, dtype=F64)
    d, da = (torch.randn(3, 5, 3, 4, generator=g, dtype=F64) for _ in range(2))
    scale = torch.randn(3, 1, 1, 1, generator=g, dtype=F64)
    z = _window_case()[0].nan_to_num(-5)
    _, code = kernels.pool_window(torch.zeros_like(z), z)
    _, idx = F.max_pool2d(z, 2, 2, return_indices=True)
    for dd in (d, None):
        want = F.max_unpool2d(kernels.relu_drive(dd, a0, da) * scale, idx, 2, 2,
                              output_size=(6, 8))
        got = kernels.drive_window(dd, a0, da, code, torch.float32, True, scale)
        assert got.dtype == torch.float32
        assert got.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(got, want.float())
        plain = kernels.drive_window(dd, a0, da, None, F64, False, None)
        assert torch.equal(plain, kernels.relu_drive(dd, a0, da)) and plain.is_contiguous()


def test_compiled_window_codes_equal_the_eager_ones():
    """Oracle: F.max_pool2d / F.max_unpool2d, as above, for the pieces compiled by
    torch.compile (inductor's CPU backend here)."""
    _check_window_codes(torch.compile(kernels.pool_window, dynamic=True, fullgraph=True),
                        torch.compile(kernels.unpool_window, dynamic=True, fullgraph=True))


def counting(pieces: kernels.Elementwise):
    """``pieces`` with every piece wrapped to count its calls, and the counter (name → calls)."""
    calls = collections.Counter()

    def counted(name, f):
        def piece(*args):
            calls[name] += 1
            return f(*args)
        return piece
    return dataclasses.replace(pieces, **{
        f.name: counted(f.name, getattr(pieces, f.name)) for f in dataclasses.fields(pieces)
        if callable(getattr(pieces, f.name))}), calls


@pytest.mark.parametrize("name", ["vgg5", "mlp", "vgg10skip"])
def test_fused_pieces_run_eagerly_equal_the_eager_engine(name, monkeypatch):
    """Oracle: the eager engine (max_pool2d's flat indices, separate drive and unpooling). The
    pieces the fused path compiles (kernels.POINTWISE: window codes, the fused drive), run
    without the compiler, give the eager estimate to 1e-12 in float64 for every scheme, both
    update rules and a step size below 1 — the fused path's logic, checked where
    torch.compile is not (and under mutation testing, which it cannot trace). ``fused=True``
    runs those pieces and the eager estimate none of them; every ReLU conv layer's drive is the
    fused one (pooling by window codes), never the separate ReLU drive."""
    pieces, calls = counting(kernels.POINTWISE)
    monkeypatch.setattr(kernels, "compiled", lambda: pieces)
    net, x, y = small(name, dtype=F64)
    signs = torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=F64)
    for update, alpha in (("mod_pgd", 1.0), ("pgd", 1.0), ("mod_pgd", 0.5), ("pgd", 0.5)):
        for scheme in ep.SCHEMES:
            kw = dict(scheme=scheme, beta=0.05, iterations=4, update=update, accumulate=False,
                      step_size=alpha, signs=signs if scheme == "random" else "example")
            calls.clear()
            eager = ep.estimate(net, x, y, **kw)
            assert not calls
            coded = ep.estimate(net, x, y, fused=True, **kw)
            assert calls, (update, alpha, scheme)
            if name == "vgg5":
                assert calls["drive"] and calls["pool"] and not calls["relu_drive"], calls
            for n in eager.grads:
                assert torch.allclose(coded.grads[n], eager.grads[n], rtol=1e-12, atol=1e-15), \
                    (update, alpha, scheme, n)
            for a, b in zip(eager.trace.phases, coded.trace.phases, strict=True):
                assert torch.allclose(a.energy, b.energy, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", ["vgg5", "vgg10skip"])
def test_fused_pieces_in_fast_precision_are_the_eager_engine_bit_for_bit(name, monkeypatch):
    """Oracle: the eager engine in fast precision (bf16 convolutions, float32 states,
    docs/method.md §7). The fused pieces (kernels.POINTWISE, run without the compiler) read the
    convolutions' bf16 outputs as they are and widen them themselves, and the fused drive
    writes the next convolution's bf16 input; widening bf16 to float32 is exact and every
    rounding to bf16 happens once either way, so the estimate and the trace are the same bits.
    On vgg10skip a skip's output and its target's own are summed in float32."""
    monkeypatch.setattr(kernels, "compiled", lambda: kernels.POINTWISE)
    net, x, y = small(name, dtype=torch.float32)
    signs = torch.tensor([1, -1, -1, 1])
    for scheme in ("centered", "random"):
        kw = dict(scheme=scheme, beta=0.05, iterations=4, accumulate=False, precision="fast",
                  signs=signs if scheme == "random" else "example")
        eager = ep.estimate(net, x, y, **kw)
        coded = ep.estimate(net, x, y, fused=True, **kw)
        assert all(torch.equal(coded.grads[n], g) for n, g in eager.grads.items()), scheme
        for a, b in zip(eager.trace.phases, coded.trace.phases, strict=True):
            assert torch.equal(a.energy, b.energy) and torch.equal(a.cost, b.cost)


@pytest.mark.parametrize("name", ["vgg5", "mlp"])
def test_fast_precision_computes_a_float64_model_as_its_float32_copy(name):
    """Oracle: the same model in float32, estimated in fast precision. Fast precision fixes its
    own dtypes (docs/method.md §7: bf16 convolutions, float32 dense maps, free phase and
    states), so a float64 model's weights are rounded to them as a float32 copy's are: the free
    phase and every phase's energies are the same bits, and the gradients differ only by being
    summed over the two phases in float64 (float64, to float32 rounding)."""
    net, x, y = small(name, dtype=F64)
    net32 = copy.deepcopy(net).float()
    kw = dict(scheme="centered", beta=0.05, iterations=4, accumulate=False, precision="fast")
    a, b = ep.estimate(net, x, y, **kw), ep.estimate(net32, x.float(), y, **kw)
    assert a.logits.dtype == torch.float32 and torch.equal(a.logits, b.logits)
    for pa, pb in zip(a.trace.phases, b.trace.phases, strict=True):
        assert torch.equal(pa.energy, pb.energy) and torch.equal(pa.cost, pb.cost)
    for n, g in a.grads.items():
        assert g.dtype == F64 and torch.allclose(g, b.grads[n].double(), rtol=1e-6,
                                                 atol=1e-9 * float(g.abs().max())), n


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vgg5", "vgg10", "mlp", "vgg10skip"])
def test_fused_equals_eager(name):
    """Oracle: the eager engine. ``fused=True`` compiles the elementwise pieces with
    torch.compile (here inductor's CPU backend), pooling by window codes and fusing the drive,
    the unpooling and the cast: in float64 the estimate equals the eager one to 1e-12 for every
    scheme and both update rules; in fast precision (bf16 convolutions) to bf16 rounding."""
    net, x, y = small(name, dtype=F64)
    signs = torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=F64)
    for update in ("mod_pgd", "pgd"):
        for scheme in ep.SCHEMES:
            kw = dict(scheme=scheme, beta=0.05, iterations=5, update=update, accumulate=False,
                      signs=signs if scheme == "random" else "example")
            eager = ep.estimate(net, x, y, **kw)
            fused = ep.estimate(net, x, y, fused=True, **kw)
            for n in eager.grads:
                assert torch.allclose(fused.grads[n], eager.grads[n], rtol=1e-10, atol=1e-13), \
                    (update, scheme, n)
            for a, b in zip(eager.trace.phases, fused.trace.phases):
                assert torch.allclose(a.energy, b.energy, rtol=1e-10, atol=1e-14)
    net, x = net.float(), x.float()
    kw = dict(scheme="centered", beta=0.05, iterations=5, accumulate=False, precision="fast")
    eager, fused = ep.estimate(net, x, y, **kw), ep.estimate(net, x, y, fused=True, **kw)
    for row in ep.compare(net, fused.grads, eager.grads):
        assert row["cosine"] > 0.999, row


def test_strict_mode_after_a_user_chose_the_matmul_precision_level():
    """Oracle: torch's own switches — a level set with torch.set_float32_matmul_precision
    ("high", common in user scripts) is overridden to IEEE inside a strict estimate (no mix of
    torch's legacy and per-operator TF32 settings) and is the same level afterwards."""
    if not eq.fp32_switches():
        pytest.skip("torch < 2.9 has no fp32_precision switches (legacy CUDA flags only)")
    level = torch.get_float32_matmul_precision()
    net, x, y = small("mlp", dtype=torch.float32)
    inside = []
    net.layers[0].register_forward_hook(lambda *_: inside.append(eq.fp32_math()))
    try:
        torch.set_float32_matmul_precision("high")
        ep.estimate(net, x, y, scheme="bp", precision="strict")
        ep.estimate(net, x, y, scheme="centered", beta=0.05, iterations=2, precision="strict")
        assert inside and all(set(s.values()) == {"ieee"} for s in inside)
        assert torch.get_float32_matmul_precision() == "high"
        assert torch.backends.cuda.matmul.allow_tf32      # legacy view agrees, no mixing error
    finally:
        torch.set_float32_matmul_precision(level)


# every elementwise piece, each pattern of absent (None) arguments it accepts — None stands for
# an exactly zero deviation (kernels' docstring); "not all": at least one of them given
_NONE_PATTERNS = {
    "relu_error": (("d",), "any"), "relu_drive": (("d", "da"), "not all"),
    "mod_pgd_update": (("da", "delta"), "not all"), "pgd_update": (("da", "delta"), "not all"),
    "mod_pgd_step": (("d", "da", "delta"), "any"), "pgd_step": (("d", "da", "delta"), "not all"),
    "linear_update": (("da", "delta"), "not all"), "linear_step": (("d", "da", "delta"), "not all"),
}


def _piece_args(name, a0, parts):
    h0 = torch.relu(a0)
    if name in ("relu_error", "relu_drive"):
        return (parts["d"], a0, parts["da"])
    if name in ("mod_pgd_update", "linear_update"):
        return (a0, parts["da"], parts["delta"])
    if name == "pgd_update":
        return (a0, h0, parts["da"], parts["delta"])
    if name in ("mod_pgd_step", "linear_step"):
        return (a0, parts["d"], parts["da"], parts["delta"], 0.375)
    return (a0, h0, parts["d"], parts["da"], parts["delta"], 0.375)        # pgd_step


def test_each_elementwise_piece_reads_none_as_an_exact_zero():
    """Oracle: the same piece called with explicit zero tensors. For every piece and every
    accepted pattern of absent arguments — the shortcuts the engine takes when a deviation is
    exactly zero — the result equals the one computed with zeros in their place, for eager
    (flat indices) and pointwise (window codes) pooling alike."""
    import itertools
    g = torch.Generator().manual_seed(3)
    a0 = torch.randn(2, 3, 4, 4, generator=g, dtype=F64)
    full = {k: torch.randn(2, 3, 4, 4, generator=g, dtype=F64) for k in ("d", "da", "delta")}
    for name, (optional, rule) in _NONE_PATTERNS.items():
        fn = getattr(kernels, name)
        for absent in itertools.chain.from_iterable(
                itertools.combinations(optional, r) for r in range(len(optional) + 1)):
            if rule == "not all" and len(absent) == len(optional):
                continue
            parts = {k: (None if k in absent else v) for k, v in full.items()}
            zeros = {k: (torch.zeros_like(v) if k in absent else v) for k, v in full.items()}
            got = fn(*_piece_args(name, a0, parts))
            want = fn(*_piece_args(name, a0, zeros))
            assert torch.equal(got, want), (name, absent)
    zc = torch.randn(2, 3, 4, 6, generator=g, dtype=F64)
    for pool in (kernels.pool_window, lambda z, dz: kernels.pool_indices(
            z, torch.zeros_like(z) if dz is None else dz)):
        m0, sel0 = pool(zc, None)
        m1, sel1 = pool(zc, torch.zeros_like(zc))
        assert torch.equal(m0, m1) and torch.equal(sel0, sel1)
    code = kernels.pool_window(zc, None)[1]
    d, da = full["d"][..., :2, :3], full["da"][..., :2, :3]
    a = a0[..., :2, :3]
    for scale in (None, torch.full((2, 1, 1, 1), 2.0, dtype=F64)):
        for sel in (None, code):
            got = kernels.drive_window(None, a, da, sel, F64, False, scale)
            want = kernels.drive_window(torch.zeros_like(d), a, da, sel, F64, False, scale)
            assert torch.equal(got, want), (scale is None, sel is None)
            got = kernels.drive_window(d, a, None, sel, F64, False, scale)
            want = kernels.drive_window(d, a, torch.zeros_like(da), sel, F64, False, scale)
            assert torch.equal(got, want), (scale is None, sel is None)


def test_each_elementwise_piece_computes_in_the_free_states_dtype():
    """Oracle: the piece on inputs cast to the free state's dtype first (kernels' docstring:
    every function takes its tensors in any dtype and computes in the dtype of ``a0`` /
    ``zc``). The maps' outputs (δa, Δ, δz) given in float64 beside a float32 free state and
    state deviation give float32 results, equal to the ones from float32 outputs."""
    g = torch.Generator().manual_seed(4)
    a0 = torch.randn(2, 3, 4, 4, generator=g)
    wide = {k: torch.randn(2, 3, 4, 4, generator=g, dtype=F64) for k in ("da", "delta")}
    wide["d"] = torch.randn(2, 3, 4, 4, generator=g)
    narrow = {k: v.float() for k, v in wide.items()}
    for name in _NONE_PATTERNS:
        fn = getattr(kernels, name)
        got, want = fn(*_piece_args(name, a0, wide)), fn(*_piece_args(name, a0, narrow))
        assert got.dtype == torch.float32 and torch.equal(got, want), name
    zc = torch.randn(2, 3, 4, 6, generator=g)
    dz = torch.randn(2, 3, 4, 6, generator=g, dtype=F64)
    for pool in (kernels.pool_window, kernels.pool_indices):
        got, want = pool(zc, dz)[0], pool(zc, dz.float())[0]
        assert got.dtype == torch.float32 and torch.equal(got, want)


def test_pointwise_pooling_keeps_every_tensor_on_the_input_device():
    """Oracle: the input's device — the window codes, the window offsets and the unpooled map
    are made where the maps live (here torch's ``meta`` device, which refuses a CPU operand),
    so the compiled kernels never read a host tensor."""
    zc = torch.zeros(2, 3, 4, 6, device="meta")
    m, code = kernels.pool_window(zc, zc)
    assert m.device.type == code.device.type == "meta" and code.dtype == torch.uint8
    out = kernels.unpool_window(m, code)
    assert out.device.type == "meta" and out.shape == (2, 3, 4, 6)


def test_layer_maps_compute_in_their_precisions_dtypes():
    """Oracle: the maps written out with torch's functional ops in the dtypes of fast precision
    (docs/method.md §7) — a conv map's nudged-phase work in bfloat16 (weights and operand
    rounded to bf16), a dense map's in float32, the free phase with float32 weights; results
    widened to the float32 state, or left in the compute dtype with ``keep``. And a layer's
    operand is cast to the dtype it is asked for."""
    from workbench.engine.equilibrate import Source
    torch.manual_seed(0)
    conv, dense = models.ConvLayer(3, 4), models.DenseLayer(12, 5)
    fast = Precision.make("fast", torch.float32, torch.device("cpu"))
    assert (fast.conv, fast.dense, fast.state) == (torch.bfloat16, torch.float32, torch.float32)
    cm, dm = conv.map(fast, "c"), dense.map(fast, "d")
    w, b = conv.weight.detach(), conv.bias.detach()
    h, d = torch.randn(2, 3, 6, 6), torch.randn(2, 3, 6, 6)
    src = Source(h)
    assert cm.delta(src, False) is None
    src.set(d)
    want = F.conv2d(d.bfloat16(), w.bfloat16(), None, padding=1)
    for keep, dtype in ((False, torch.float32), (True, torch.bfloat16)):
        got = cm.delta(src, keep)
        assert got.dtype == dtype and torch.equal(got, want.to(dtype)), keep
    got = cm.delta(src)                                       # the state dtype unless kept
    assert got.dtype == torch.float32 and torch.equal(got, want.float())
    assert torch.equal(cm.free(h), F.conv2d(h, w, b, padding=1))
    g = torch.randn(2, 4, 6, 6)
    want = F.conv_transpose2d(g.bfloat16(), w.bfloat16(), padding=1)
    for keep, dtype in ((False, torch.float32), (True, torch.bfloat16)):
        got = cm.vjp(g, src, keep)
        assert got.dtype == dtype and torch.equal(got, want.to(dtype)), keep
    got = cm.vjp(g, src)
    assert got.dtype == torch.float32 and torch.equal(got, want.float())
    gw, gb = cm.param_grads(h, g)
    assert gw.dtype == gb.dtype == torch.float32
    wd = dense.weight.detach()
    dsrc = Source(torch.randn(2, 12))
    dsrc.set(torch.randn(2, 12))
    assert torch.equal(dm.delta(dsrc, False), F.linear(dsrc.d, wd))
    assert torch.equal(dm.vjp(torch.ones(2, 5), dsrc, False), torch.ones(2, 5) @ wd)
    t = torch.randn(2, 3, 4, 4, dtype=F64)
    skip = models.SkipLayer(0, 2, 48, 5, spatial=False)
    for layer in (dense, conv, skip):
        assert layer.operand(t, torch.float32).dtype == torch.float32, layer.kind


def test_the_relu_drive_at_a_unit_exactly_on_its_kink_is_autograds():
    """Oracle: autograd of torch.relu, whose derivative at 0 is 0 — a unit whose new
    pre-activation a⁰ + δa is exactly 0 passes no drive, one just above passes its error."""
    a0 = torch.tensor([[-1.0, 0.0, 1.0, 2.0]], dtype=F64)
    da = torch.tensor([[1.0, 0.0, -1.0, -1.5]], dtype=F64)
    d = torch.tensor([[0.5, -0.25, 0.75, 1.0]], dtype=F64)
    a = (a0 + da).requires_grad_()
    slope, = torch.autograd.grad(torch.relu(a).sum(), a)
    eps = d - (torch.relu(a0 + da) - torch.relu(a0))
    assert torch.equal(kernels.relu_drive(d, a0, da), slope * eps)
    assert torch.equal(slope, torch.tensor([[0.0, 0.0, 0.0, 1.0]], dtype=F64))


@pytest.mark.parametrize("name", ["mlp", "vgg5"])
def test_the_phases_energies_are_the_plain_forms(name):
    """Oracle: workbench.engine.energy.layer_energies — the per-layer energy ½‖ε_k‖² (batch mean) that
    a nudged phase reports, from deviations only, equals the plain form evaluated at its states
    h⁰ + d after a few iterations."""
    net, x, y = small(name)
    phase, free = make_phase(net, x, y, 0.1, Precision.make("strict", F64, x.device))
    for _ in range(3):
        phase.step()
    states = [h if phase.deviation(k) is None else h + phase.deviation(k)
              for k, h in enumerate(free.h)]
    want = energy.layer_energies(net, states).mean(0)
    assert torch.allclose(phase.energies(), want, rtol=1e-10, atol=1e-14)
