"""Any PyTorch block as a PCN layer (docs/method.md §9): from_blocks, BatchNorm, resnet18, vit.
Each test names its oracle; everything in float64 on the CPU."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from plain import plain_iteration
from test_engine import small
from workbench.engine import ep, models
from workbench.engine.equilibrate import NudgedPhase, free_phase
from workbench.engine.precision import Precision
from workbench.engine.settings import resolve_precision

F64 = torch.float64


# ---------------------------------------------------------------------------------------------
# blocks written here, as a user would
# ---------------------------------------------------------------------------------------------
class ResidualBN(nn.Module):
    """conv-BN-ReLU-conv-BN plus the identity: a residual block with BatchNorm."""

    def __init__(self, c):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(),
                                  nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c))

    def forward(self, h):
        return h + self.body(h)


class Tokens(nn.Module):
    """(N, C, H, W) maps → (N, H·W, C) tokens, through a linear map."""

    def __init__(self, c, dim):
        super().__init__()
        self.proj = nn.Linear(c, dim)

    def forward(self, h):
        return self.proj(h.flatten(2).transpose(1, 2))


class Attention(nn.Module):
    """Pre-norm self-attention with torch's own nn.MultiheadAttention, plus the identity."""

    def __init__(self, dim):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)

    def forward(self, x):
        z = self.norm(x)
        return x + self.attn(z, z, z, need_weights=False)[0]


class GeluMLP(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.mlp = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.GELU(),
                                 nn.Linear(2 * dim, dim))

    def forward(self, x):
        return x + self.mlp(x)


class MeanHead(nn.Module):
    def __init__(self, dim, classes):
        super().__init__()
        self.linear = nn.Linear(dim, classes)

    def forward(self, x):
        return self.linear(x.mean(1))


def chain(seed=0):
    """conv (ReLU) | residual BN block (ReLU) | conv + pool (ReLU) | tokens, attention, GELU MLP
    (identity) | head: a test-written chain of every kind of block."""
    torch.manual_seed(seed)
    blocks = [nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4)), ResidualBN(4),
              nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), nn.MaxPool2d(2)), Tokens(6, 8),
              Attention(8), GeluMLP(8), MeanHead(8, 5)]
    net = models.from_blocks(blocks, activations=["relu"] * 3 + ["identity"] * 4).to(F64)
    g = torch.Generator().manual_seed(seed + 1)
    return net, torch.rand(4, 2, 8, 8, dtype=F64, generator=g), torch.randint(0, 5, (4,),
                                                                             generator=g)


def general(name, seed, mode="train"):
    if name == "chain":
        net, x, y = chain(seed)
    else:
        kw = dict(width=4) if name == "resnet18" else dict(dim=16, depth=2, heads=2)
        torch.manual_seed(seed)
        net = models.build(name, num_classes=5, in_channels=3, image_size=16, **kw).to(F64)
        g = torch.Generator().manual_seed(seed + 1)
        x = torch.rand(4, 3, 16, 16, dtype=F64, generator=g)
        y = torch.randint(0, 5, (4,), generator=g)
    getattr(net, mode)()
    return net, x, y


# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,seed,mode", [("resnet18", 0, "train"), ("resnet18", 2, "eval"),
                                            ("vit", 0, "train"), ("chain", 0, "train"),
                                            ("chain", 0, "eval")])
def test_ep_tends_to_backprop_per_parameter_with_the_expected_bias_order(name, seed, mode):
    """Oracle: autograd backprop through the blocks' own forward (train-mode BatchNorm: the
    batch's statistics, as BP in train mode) — per parameter tensor cosine ≥ 0.9999 at β = 1e-5
    (≈ 0 where BP's is zero: a bias right before a train-mode BatchNorm),
    and the log–log slope of the whole error between β = 1e-4, 3e-5 and 1e-5 is 1 for forward
    and 2 for centered (±0.05). Precondition, asserted: every phase converged (state change
    < 1e-13) — a unit inside a block within ~β of its ReLU kink makes the phase cycle instead
    (docs/method.md §9); these seeds have none at these β."""
    net, x, y = general(name, seed, mode)
    bp = ep.estimate(net, x, y, scheme="bp", accumulate=False).grads
    for scheme, order in (("forward", 1.0), ("centered", 2.0)):
        errs = []
        for beta in (1e-4, 3e-5, 1e-5):
            est = ep.estimate(net, x, y, scheme=scheme, beta=beta, iterations=60,
                              accumulate=False)
            assert max(float(p.state_change[-1].max()) for p in est.trace.phases) < 1e-13
            errs.append(ep.relative_error(est.grads, bp))
        scale = math.sqrt(sum(float(r.pow(2).sum()) for r in bp.values()))
        for n, g in est.grads.items():
            if float(bp[n].norm()) < 1e-12 * scale:     # a bias that BatchNorm cancels: BP's
                assert float(g.norm()) < 1e-6 * scale   # gradient is zero (rounding), EP's ≈ 0
                continue
            cos = float(torch.nn.functional.cosine_similarity(g.flatten(), bp[n].flatten(), 0))
            assert cos >= 0.9999, (scheme, n, cos)
        slopes = [math.log10(errs[0] / errs[1]) / math.log10(10 / 3),
                  math.log10(errs[1] / errs[2]) / math.log10(3)]
        assert all(abs(s - order) < 0.05 for s in slopes), (scheme, errs, slopes)


@pytest.mark.parametrize("update", ["mod_pgd", "pgd"])
@pytest.mark.parametrize("order", ["async", "sync"])
def test_deviation_form_of_general_blocks_equals_the_plain_form(update, order):
    """Oracle: the nudged dynamics written plainly on full states (tests/plain.py: E by
    workbench.engine.energy, Δ_k by autograd, an identity layer moving to a_k + Δ_k), with train-mode
    BatchNorm inside: the engine's states h⁰ + d agree after every iteration, to 1e-12."""
    net, x, y = chain(seed=3)
    free = free_phase(net, x, Precision.make("strict", F64, x.device))
    phase = NudgedPhase(net, free, y, torch.full((x.shape[0], 1), 0.2, dtype=F64), "ce",
                        update, order)
    states = [h.clone() for h in free.h]
    for _ in range(5):
        phase.step()
        states = plain_iteration(net, states, y, 0.2, update, phase.sweeps)
        for k in range(1, len(net.layers) + 1):
            assert torch.allclose(phase.state(k), states[k], rtol=0, atol=1e-12), k


@pytest.mark.parametrize("name", ["mlp", "vgg5"])
def test_builtin_layers_written_as_torch_blocks_give_the_same_estimate(name):
    """Oracle: the built-in engine (closed-form W d, Wᵀ g, g ⊗ h) — the same network written as
    plain nn.Conv2d / nn.MaxPool2d / nn.Flatten + nn.Linear blocks through from_blocks
    (models.as_blocks, weights copied) gives the same estimate, per layer within 1e-9 relative,
    for every scheme, both update rules, clamping and α = 0.5."""
    net, x, y = small(name, seed=2)
    twin = models.as_blocks(net)
    assert [n for n, _ in twin.named_parameters()][:2] in (
        ["layers.0.0.weight", "layers.0.0.bias"], ["layers.0.1.weight", "layers.0.1.bias"])
    signs = torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=F64)
    cases = [dict(scheme=s, update=u) for s in (*ep.SCHEMES, "bp") for u in ("mod_pgd", "pgd")]
    cases += [dict(scheme="centered", perturbation="clamp"), dict(scheme="centered",
                                                                 step_size=0.5, order="sync")]
    for kw in cases:
        if kw["scheme"] == "random":
            kw["signs"] = signs
        if kw["scheme"] != "bp":
            kw.update(beta=0.05, iterations=7)
        a = ep.estimate(net, x, y, accumulate=False, **kw)
        b = ep.estimate(twin, x, y, accumulate=False, **kw)
        for k in range(1, len(net.layers) + 1):
            ga = torch.cat([a.grads[f"layers.{k - 1}.weight"].flatten(),
                            a.grads[f"layers.{k - 1}.bias"].flatten()])
            gb = torch.cat([g.flatten() for n, g in b.grads.items()
                            if n.startswith(f"layers.{k - 1}.")])
            assert float((ga - gb).norm() / ga.norm()) <= 1e-9, (kw, k)
        for pa, pb in zip(a.trace.phases, b.trace.phases):
            assert torch.allclose(pa.total, pb.total, rtol=1e-9, atol=1e-14), kw
    rows = ep.compare(twin, b.grads, b.grads)
    assert [r["layer"] for r in rows] == list(range(1, len(net.layers) + 1))
    assert {r["kind"] for r in rows} == {"block"}

def test_running_statistics_move_once_per_estimate_like_one_forward_pass():
    """Oracle: one forward pass of a copy of the network in train mode — after one estimate of
    any scheme (centered: two nudged phases), every BatchNorm's running mean, variance and batch
    count equal the copy's; in eval mode nothing moves; and the nudged phases themselves leave
    the statistics alone (the free phase is their only update)."""
    import copy
    net, x, y = general("resnet18", 0)
    for scheme in (*ep.SCHEMES, "bp"):
        twin = copy.deepcopy(net)
        twin(x)
        kw = {} if scheme == "bp" else dict(beta=0.01, iterations=4)
        if scheme == "random":
            kw["signs"] = "batch"
        ep.estimate(net, x, y, scheme=scheme, accumulate=False, **kw)
        for (n, a), (_, b) in zip(net.named_buffers(), twin.named_buffers()):
            assert torch.equal(a, b), (scheme, n)
    counts = [int(b) for n, b in net.named_buffers() if n.endswith("num_batches_tracked")]
    assert counts and set(counts) == {len(ep.SCHEMES) + 1}
    net.eval()
    before = [b.clone() for b in net.buffers()]
    ep.estimate(net, x, y, scheme="centered", beta=0.01, iterations=4)
    assert all(torch.equal(a, b) for a, b in zip(before, net.buffers()))


def test_random_signs_per_example_are_refused_where_batchnorm_couples_the_examples():
    """Oracle: docs/method.md §9 — with train-mode BatchNorm the energy is not a sum over
    examples, so per-example signs give no estimate: refused naming signs='batch'; per batch
    it runs and equals the forward (or backward) scheme of that sign; eval mode accepts both."""
    net, x, y = general("chain", 0)
    with pytest.raises(ValueError, match="signs='batch'"):
        ep.estimate(net, x, y, scheme="random", beta=0.01, iterations=3,
                    signs=torch.tensor([1.0, -1.0, 1.0, 1.0], dtype=F64))
    same = torch.ones(4, dtype=F64)
    rnd = ep.estimate(net, x, y, scheme="random", beta=0.01, iterations=3, signs=same,
                      accumulate=False).grads
    fwd = ep.estimate(net, x, y, scheme="forward", beta=0.01, iterations=3,
                      accumulate=False).grads
    assert all(torch.allclose(rnd[n], fwd[n], rtol=1e-12, atol=1e-15) for n in fwd)
    net.eval()
    ep.estimate(net, x, y, scheme="random", beta=0.01, iterations=3)


def test_parameter_names_grads_and_frozen_parameters():
    """Oracle: net.named_parameters() — the estimate's names are the blocks' own under their
    layer, .grad is written for each (equal to est.grads), and a parameter with requires_grad
    off gets no gradient from EP or BP (as autograd leaves it)."""
    net, x, y = general("chain", 0)
    frozen = net.layers[1].body[1].weight
    frozen.requires_grad_(False)
    for scheme in ("centered", "bp"):
        for p in net.parameters():
            p.grad = None
        kw = {} if scheme == "bp" else dict(beta=0.01, iterations=3)
        est = ep.estimate(net, x, y, scheme=scheme, **kw)
        names = [n for n, p in net.named_parameters() if p.requires_grad]
        assert list(est.grads) == names and "layers.4.attn.in_proj_weight" in names
        assert "layers.1.body.1.weight" not in est.grads and frozen.grad is None
        for n, p in net.named_parameters():
            if p.requires_grad:
                assert torch.equal(p.grad, est.grads[n]), n


def test_shapes_come_from_the_first_batch_and_bad_blocks_are_named():
    """Oracle: the blocks' own outputs — in_shape and num_classes are unknown until the first
    batch and then its shapes; each bad block or argument is refused with a message that says
    what was wrong."""
    net, x, y = chain()
    assert net.in_shape is None and net.num_classes is None
    net(x)
    assert net.in_shape == (2, 8, 8) and net.num_classes == 5

    class Pair(nn.Module):
        def forward(self, h):
            return h, h

    class Doubler(nn.Module):
        def forward(self, h):
            return torch.cat([h, h])

    x = torch.rand(3, 4, dtype=F64)
    y = torch.zeros(3, dtype=torch.long)
    cases = [([nn.Linear(4, 4), Pair(), nn.Linear(4, 2)], {}, "returned a tuple"),
             ([nn.Linear(4, 4), Doubler(), nn.Linear(4, 2)], {}, "changed the batch"),
             ([nn.Linear(4, 3), nn.Linear(5, 2)], {}, "block 2 .Linear. failed"),
             ([nn.Linear(4, 2), nn.Unflatten(1, (1, 2))], {}, r"\(N, classes\) logits")]
    for blocks, kw, needle in cases:
        net = models.from_blocks(blocks, **kw).to(F64)
        with pytest.raises(ValueError, match=needle):
            ep.estimate(net, x, y, scheme="centered", beta=0.1, iterations=2)
    refused = [(([nn.Linear(4, 2)],), dict(activations="tanh"), "unknown activation 'tanh'"),
               (([nn.Linear(4, 4), nn.Linear(4, 2)],), dict(activations=["relu", "relu"]),
                "must be 'identity'"),
               (([nn.Linear(4, 2)],), dict(activations=["relu", "identity"]), "one entry per"),
               (([nn.Linear(4, 4), nn.Dropout(0.1), nn.Linear(4, 2)],), {}, "dropout p=0.1"),
               (([nn.Linear(4, 4), 3],), {}, "block 2 is a int"), (([],), {}, "at least one"),
               ((nn.Linear(4, 2),), {}, "a sequence of nn.Module")]
    for args, kw, needle in refused:
        with pytest.raises(ValueError, match=needle):
            models.from_blocks(*args, **kw)


def test_general_blocks_run_in_strict_precision_only():
    """Oracle: docs/method.md §9 (a block's deviation is a difference of O(1) values) — fast
    precision is refused with the reason, and auto resolves to strict on every device."""
    net, x, y = general("vit", 0)
    with pytest.raises(ValueError, match="built-in conv/dense layers"):
        ep.estimate(net, x, y, precision="fast")
    assert resolve_precision("auto", torch.float32, "cuda", linear=False) == "strict"
    assert resolve_precision("auto", torch.float32, "cuda") == "fast"
    assert models.general("resnet18") and models.general("vit") and not models.general("vgg5")


def test_diagnostics_count_switched_units_of_general_relu_layers():
    """Oracle: an explicit forward pass of each block on the nudged states — the fraction of a
    ReLU layer's pre-activations whose sign differs from the free state's equals the trace's
    last row (a large β, so that units do switch); identity layers report 0."""
    net, x, y = general("chain", 0)
    free = free_phase(net, x, Precision.make("strict", F64, x.device))
    phase = NudgedPhase(net, free, y, torch.full((4, 1), 3.0, dtype=F64), "ce")
    tr = phase.run(4, diagnostics=True)
    states = [phase.state(k) for k in range(len(net.layers) + 1)]
    from workbench.engine.blocks import frozen_statistics
    with frozen_statistics(net), torch.no_grad():
        for k, act in enumerate(net.activations, start=1):
            a = net.layers[k - 1](states[k - 1])
            want = float(((a > 0) != (free.a[k] > 0)).double().mean()) if act == "relu" else 0.0
            assert abs(float(tr.switched[-1, k - 1]) - want) < 1e-12, k
    assert float(tr.switched[-1].max()) > 0 and float(tr.pool_changed.abs().max()) == 0


def test_resnet18_and_vit_shapes_parameters_and_registry():
    """Oracles: torchvision's ResNet-18 parameter count (11,689,512 at 224 px with 1000
    classes: its stem, stages and head), the CIFAR stem below 64 px, and the ViT's token
    shapes by construction."""
    net = models.build("resnet18", num_classes=1000, in_channels=3, image_size=224)
    assert sum(p.numel() for p in net.parameters()) == 11_689_512
    assert len(net.layers) == 10 and net.activations == ("relu",) * 9 + ("identity",)
    assert isinstance(net.layers[0][2], nn.MaxPool2d)
    small_net = models.build("resnet18", num_classes=10, in_channels=3, image_size=32, width=8)
    assert small_net.layers[0][0].kernel_size == (3, 3) and len(small_net.layers[0]) == 2
    assert models.default_image_size("resnet18") == 32 == models.default_image_size("vit")
    v = models.build("vit", num_classes=10, in_channels=3, image_size=32, patch=4, dim=16,
                     depth=3, heads=2)
    states = v.free_states(torch.rand(2, 3, 32, 32))
    assert [tuple(s.shape) for s in states[1:]] == [(2, 64, 16)] * 4 + [(2, 10)]
    assert v.activations == ("identity",) * 5
    with pytest.raises(ValueError, match="multiple of patch"):
        models.build("vit", num_classes=10, in_channels=3, image_size=30)


def test_identity_layers_with_a_step_size_reach_the_closed_form_fixed_point():
    """Oracle: the fixed point of the α = 1 updates (docs/method.md §2, App. A.1): a vit (every
    hidden layer the identity, h ← (1 − α) h + α (a + Δ)) with α = 0.5 iterated to convergence
    gives the α = 1 estimate to 1e-9; after 3 iterations it has not got there (> 1e-2)."""
    net, x, y = general("vit", 0)
    kw = dict(scheme="centered", beta=0.01, accumulate=False)
    one = ep.estimate(net, x, y, iterations=100, **kw)
    half = ep.estimate(net, x, y, iterations=200, step_size=0.5, **kw)
    assert max(float(p.state_change[-1].max()) for p in half.trace.phases) < 1e-13
    assert ep.relative_error(half.grads, one.grads) < 1e-9
    early = ep.estimate(net, x, y, iterations=3, step_size=0.5, **kw)
    assert ep.relative_error(early.grads, one.grads) > 1e-2


@pytest.mark.parametrize("name,update", [("vgg10skip", "mod_pgd"), ("vgg10skip", "pgd"),
                                         ("chain", "mod_pgd"), ("chain", "pgd")])
def test_steps_of_size_alpha_equal_the_plain_form_iteration_by_iteration(name, update):
    """Oracle: the plain form of the step-size update (tests/plain.py, Eq. 15: every target T
    becomes (1 − α) h + α T, then projected) — with α = 0.5 the engine's states agree after every
    iteration to 1e-12 (ReLU layers, identity layers, pooling, skips, the nudged output), so
    the path is checked, not only the fixed point."""
    if name == "chain":
        net, x, y = chain(seed=3)
    else:
        net, x, y = small(name, seed=4)
    free = free_phase(net, x, Precision.make("strict", F64, x.device))
    phase = NudgedPhase(net, free, y, torch.full((x.shape[0], 1), 0.3, dtype=F64), "ce",
                        update, "async", step_size=0.5)
    states = [h.clone() for h in free.h]
    for _ in range(5):
        phase.step()
        states = plain_iteration(net, states, y, 0.3, update, phase.sweeps, step_size=0.5)
        for k in range(1, len(net.layers) + 1):
            assert torch.allclose(phase.state(k), states[k], rtol=0, atol=1e-12), k


class UnusedParameter(nn.Module):
    """A block with a parameter its output does not use, and an input it ignores."""

    def __init__(self):
        super().__init__()
        self.used = nn.Linear(4, 4)
        self.unused = nn.Parameter(torch.ones(3))

    def forward(self, h):
        return self.used.bias.expand(h.shape[0], 4) * 1.0


def test_blocks_with_unused_parameters_or_inputs_get_zeros_there():
    """Oracle: autograd's answer that a tensor is not used (zero) — a block whose output ignores
    its input sends no top-down term (the layers below get exactly BP's zero gradient), a
    parameter it does not use gets a zero gradient from EP and BP alike, and the estimate still
    matches BP on the rest (cosine ≥ 0.9999 at small β)."""
    torch.manual_seed(0)
    net = models.from_blocks([nn.Linear(6, 4), UnusedParameter(), nn.Linear(4, 3)]).to(F64)
    x, y = torch.rand(5, 6, dtype=F64), torch.tensor([0, 1, 2, 0, 1])
    bp = ep.estimate(net, x, y, scheme="bp", accumulate=False).grads
    est = ep.estimate(net, x, y, scheme="centered", beta=1e-5, iterations=20,
                      accumulate=False).grads
    assert torch.equal(est["layers.1.unused"], torch.zeros(3, dtype=F64))
    assert float(est["layers.0.weight"].abs().max()) == 0 == float(bp["layers.0.weight"].abs()
                                                                     .max())
    for n in ("layers.1.used.bias", "layers.2.weight"):
        cos = float(torch.nn.functional.cosine_similarity(est[n].flatten(), bp[n].flatten(), 0))
        assert cos >= 0.9999, n


def test_dropout_anywhere_in_a_block_is_named():
    """Oracle: the modules of the block — a dropout nested in a block, or the dropout of torch's
    own attention, is refused naming the block and the submodule."""
    inner = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.ReLU(), nn.Dropout(0.2)))
    with pytest.raises(ValueError, match=r"block 1 \(Sequential\) \(1\.1\) has dropout p=0\.2"):
        models.from_blocks([inner, nn.Linear(4, 2)])
    with pytest.raises(ValueError, match=r"block 2 \(Attention\) \(attn\) has dropout p=0\.1"):
        attn = Attention(8)
        attn.attn = nn.MultiheadAttention(8, 2, dropout=0.1, batch_first=True)
        models.from_blocks([Tokens(2, 8), attn, MeanHead(8, 3)])


class _Counted(nn.Module):
    """A linear block that counts its forward passes."""

    def __init__(self, n_in, n_out):
        super().__init__()
        self.lin, self.calls = nn.Linear(n_in, n_out), 0

    def forward(self, h):
        self.calls += 1
        return self.lin(h)


def test_a_block_runs_forward_once_per_value_of_its_input():
    """Oracle: counting the block's forward calls. The drive, the top-down VJP and the weight
    gradients at one state share one forward graph (docs/method.md §9: built once per value of
    the input), so over K iterations a block runs forward at most K + 2 times — once for the
    free phase and its graph, then once per new value of its input — not once per use."""
    torch.manual_seed(0)
    blocks = [_Counted(16, 8), _Counted(8, 8), _Counted(8, 3)]
    net = models.from_blocks(blocks).to(torch.float64)
    x, y = torch.randn(4, 16, dtype=torch.float64), torch.tensor([0, 1, 2, 0])
    K = 6
    ep.estimate(net, x, y, scheme="forward", beta=0.1, iterations=K)
    calls = [b.calls for b in blocks]
    assert all(c <= K + 2 for c in calls) and calls[-1] >= K, calls


class _Constant(nn.Module):
    """A block whose output ignores its input (a fixed buffer)."""

    def __init__(self, n):
        super().__init__()
        self.register_buffer("value", torch.linspace(-1.0, 1.0, n))

    def forward(self, h):
        return self.value.expand(h.shape[0], -1)


def test_a_block_whose_output_ignores_its_input_passes_no_signal_down():
    """Oracle: autograd backprop — below a block whose output does not depend on its input,
    BP's gradients are exactly zero; EP's are too (no nudge reaches those layers: the block's
    VJP is zero, the map of a state it cannot move), and the layers above still learn."""
    torch.manual_seed(0)
    net = models.from_blocks([nn.Linear(6, 5), _Constant(5), nn.Linear(5, 3)]).to(torch.float64)
    x, y = torch.randn(4, 6, dtype=torch.float64), torch.tensor([0, 1, 2, 0])
    bp = ep.estimate(net, x, y, scheme="bp", accumulate=False).grads
    est = ep.estimate(net, x, y, scheme="centered", beta=0.05, iterations=6,
                      accumulate=False).grads
    for name in ("layers.0.weight", "layers.0.bias"):
        assert torch.count_nonzero(bp[name]) == 0 and torch.count_nonzero(est[name]) == 0, name
    cos = torch.nn.functional.cosine_similarity(est["layers.2.weight"].flatten(),
                                                bp["layers.2.weight"].flatten(), 0)
    assert float(cos) > 0.999


def test_a_dropout_block_itself_is_named_without_a_submodule():
    """Oracle: the message written out here — a dropout that is the block itself is refused as
    ``block k (Dropout) has dropout p=…``, with no submodule name in parentheses."""
    with pytest.raises(ValueError, match=r"block 2 \(Dropout\) has dropout p=0\.3: dropout "):
        models.from_blocks([nn.Linear(4, 4), nn.Dropout(0.3), nn.Linear(4, 2)])


def test_a_blocks_deviation_is_none_while_its_input_has_none():
    """Oracle: the engine's convention that None is an exactly zero deviation (docs/method.md
    §6) — a block map reading a state that has not moved returns None without running
    forward, and a moved state gives ``g(h⁰ + d) − g(h⁰)``."""
    from workbench.engine.equilibrate import Source
    torch.manual_seed(0)
    net = models.from_blocks([nn.Linear(6, 5), nn.Linear(5, 3)]).to(torch.float64)
    x = torch.randn(4, 6, dtype=torch.float64)
    free = free_phase(net, x, Precision.make("strict", torch.float64, x.device))
    block_map, src = free.maps[1], Source(free.h[1])
    assert block_map.delta(src, False) is None
    d = torch.randn_like(free.h[1])
    src.set(d)
    want = torch.nn.functional.linear(free.h[1] + d, *_weights(net, 1)) - \
        torch.nn.functional.linear(free.h[1], *_weights(net, 1))
    assert torch.allclose(block_map.delta(src, False), want, rtol=1e-12, atol=1e-14)


def _weights(net, k):
    params = [p for n, p in net.named_parameters() if n.startswith(f"layers.{k}.")]
    return params[0], params[1]


def test_compare_gives_a_layer_without_parameters_an_empty_row():
    """Oracle: the definitions in ep.compare's docstring — a layer with no trainable
    parameters (here a block whose output ignores its input) compares as norms 0 and NaN
    cosine and relative error, the other layers as usual."""
    torch.manual_seed(0)
    net = models.from_blocks([nn.Linear(6, 5), _Constant(5), nn.Linear(5, 3)]).to(torch.float64)
    x, y = torch.randn(4, 6, dtype=torch.float64), torch.tensor([0, 1, 2, 0])
    bp = ep.estimate(net, x, y, scheme="bp", accumulate=False).grads
    rows = ep.compare(net, bp, bp)
    assert [r["layer"] for r in rows] == [1, 2, 3]
    empty = rows[1]
    assert empty["norm"] == 0.0 == empty["ref_norm"]
    assert math.isnan(empty["cosine"]) and math.isnan(empty["rel_error"])
    assert rows[2]["cosine"] == pytest.approx(1.0) and rows[2]["rel_error"] == 0.0
