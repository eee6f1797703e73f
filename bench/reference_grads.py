"""The reference gradients that pin the engine's numbers across refactors (tests/test_reference.py).

Float64 gradients of 5 schemes (BP included) × 2 update rules × 2 costs on fixed, seeded mlp and
vgg5 batches — computed by any checkout of the workbench, so that two revisions can be put side
by side on one machine:

    .venv/bin/python bench/reference_grads.py dump --tree /tmp/old --out /tmp/old.pt
    .venv/bin/python bench/reference_grads.py dump --out /tmp/new.pt          # this checkout
    .venv/bin/python bench/reference_grads.py compare /tmp/old.pt /tmp/new.pt  # bit for bit?
    .venv/bin/python bench/reference_grads.py fixture /tmp/old.pt --rev 73f441d \
        --out tests/data/reference_grads.json

``dump`` imports the ``workbench`` package of ``--tree`` (a checkout, e.g. ``git archive REV |
tar -x -C /tmp/old``) in a fresh interpreter and saves every gradient. ``compare`` prints the
number of tensors that differ in any bit and the largest relative difference. ``fixture`` writes
the test's reference: per tensor its norm and a sketch — the products ⟨v_i, g⟩ with 8 fixed
vectors of random signs — so that the test bounds ‖g − g_ref‖ / ‖g_ref‖ (estimated from the
sketch, see :func:`sketch_error`) at a tolerance of float64 rounding instead of asking for the
same bits, which different CPUs' BLAS kernels do not give.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
# the fixed problems: small mlp and vgg5 (fan-out convolutions, as at 73f441d), batch of 6
SPECS = {"mlp": dict(kw=dict(widths=(24, 16)), size=8, ch=1),
         "vgg5": dict(kw=dict(channels=(4, 6, 8, 8, 8), conv_fan="fan_out"), size=32, ch=1)}
KEYS = [f"{scheme}/{update}/{cost}" for scheme in ("backward", "bp", "centered", "forward",
                                                   "random")
        for update in ("mod_pgd", "pgd") for cost in ("ce", "mse")]
SKETCH_ROWS = 8
SKETCH_SEED = 20261203


def exact_uniform(shape, generator: torch.Generator) -> torch.Tensor:
    """Float64 draws from U[0, 1) on a 2⁻²⁴ grid, from an integer RNG: the same numbers on every
    machine (torch's floating-point samplers take CPU-specific vectorised paths)."""
    return torch.randint(0, 2 ** 24, tuple(shape), generator=generator).double() / 2 ** 24


def problem(models, name: str):
    """``(net, x, y, signs)`` of problem ``name``, built with the given ``models`` module. The
    weights are set from :func:`exact_uniform`, scaled to the paper's bound ``√(1/fan)`` (fan-in
    for dense maps, fan-out for these convolutions) with biases a tenth of it, and the inputs
    drawn the same way, so that the problem is identical on every CPU."""
    spec = SPECS[name]
    net = models.build(name, num_classes=5, in_channels=spec["ch"], image_size=spec["size"],
                       **spec["kw"]).to(torch.float64)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in net.layers:
            w = layer.weight
            fan = w.shape[0] * w[0, 0].numel() if w.dim() == 4 else w.shape[1]
            bound = math.sqrt(1.0 / fan)
            w.copy_((exact_uniform(w.shape, g) * 2 - 1) * bound)
            layer.bias.copy_((exact_uniform(layer.bias.shape, g) * 2 - 1) * (bound / 10))
    x = exact_uniform((6, spec["ch"], spec["size"], spec["size"]), g)
    y = torch.randint(0, 5, (6,), generator=g)
    signs = torch.tensor([1., -1., -1., 1., 1., -1.], dtype=torch.float64)
    return net, x, y, signs


def gradients(ep, models) -> dict:
    """``{model: {"weights": state_dict, "grads": {key: {name: tensor}}}}`` for every problem."""
    out = {}
    for name in SPECS:
        net, x, y, signs = problem(models, name)
        grads = {}
        for key in KEYS:
            scheme, update, cost = key.split("/")
            extra = {"signs": signs} if scheme == "random" else {}
            est = ep.estimate(net, x, y, scheme=scheme, beta=0.05, iterations=7, cost=cost,
                              update=update, accumulate=False, precision="strict", **extra)
            grads[key] = {k: v.detach().clone() for k, v in est.grads.items()}
        out[name] = {"weights": {k: v.clone() for k, v in net.state_dict().items()},
                     "grads": grads}
    return out


def sketch_vectors(n: int) -> torch.Tensor:
    """``(SKETCH_ROWS, n)`` float64 entries ±1, the same on every machine (an integer RNG)."""
    g = torch.Generator().manual_seed(SKETCH_SEED + n)
    return (torch.randint(0, 2, (SKETCH_ROWS, n), generator=g) * 2 - 1).double()


def sketch(t: torch.Tensor) -> list[float]:
    flat = t.detach().double().flatten().cpu()
    return (sketch_vectors(flat.numel()) @ flat).tolist()


def sketch_error(t: torch.Tensor, ref: dict) -> float:
    """The relative difference of ``t`` from a fixture entry ``{"norm", "sketch"}``, estimated
    from the sketch: ``‖V(t − r)‖ / (√m ‖r‖)``. For ±1 rows, ``E‖V e‖² = m ‖e‖²``, so this is
    ``‖t − r‖ / ‖r‖`` up to a factor that 8 rows keep within about 0.3–1.8 (and a change that
    alters the tensor changes its sketch with probability 1)."""
    diff = torch.tensor(sketch(t), dtype=torch.float64) - torch.tensor(ref["sketch"],
                                                                      dtype=torch.float64)
    norm = ref["norm"]
    if norm == 0:
        return 0.0 if float(t.detach().abs().max()) == 0 else math.inf
    return float(diff.norm()) / (math.sqrt(SKETCH_ROWS) * norm)


def _dump(args) -> int:
    tree = Path(args.tree).resolve()
    code = (f"import sys; sys.path.insert(0, {str(tree)!r}); sys.path.insert(1, {str(ROOT)!r})\n"
            "import torch\n"
            "from workbench import ep, models\n"
            "assert ep.__file__.startswith(sys.path[0]), ep.__file__\n"
            "import runpy\n"
            f"gradients = runpy.run_path({__file__!r})['gradients']\n"
            f"torch.save(gradients(ep, models), {str(Path(args.out).resolve())!r})\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd="/")
    print(f"wrote {args.out} (workbench of {tree})")
    return 0


def _compare(args) -> int:
    a, b = torch.load(args.a, weights_only=True), torch.load(args.b, weights_only=True)
    differ, total, worst = 0, 0, 0.0
    for name in SPECS:
        for part in ("weights", "grads"):
            pairs = ([(k, a[name][part][k], b[name][part][k]) for k in a[name][part]]
                     if part == "weights" else
                     [(f"{key}:{k}", a[name][part][key][k], b[name][part][key][k])
                      for key in a[name][part] for k in a[name][part][key]])
            for _, u, v in pairs:
                total += 1
                if not torch.equal(u, v):
                    differ += 1
                    worst = max(worst, float((u - v).norm() / v.norm().clamp_min(1e-300)))
    print(json.dumps({"tensors": total, "differing_in_any_bit": differ,
                      "largest_relative_difference": worst}))
    return 0 if differ == 0 else 1


def _entry(t: torch.Tensor) -> dict:
    return {"norm": float(t.norm()), "sketch": sketch(t)}


def _fixture(args) -> int:
    dump = torch.load(args.dump, weights_only=True)
    out = {"revision": args.rev, "machine": args.machine, "torch": torch.__version__,
           "sketch_rows": SKETCH_ROWS, "sketch_seed": SKETCH_SEED}
    for name in SPECS:
        out[name] = {"weights": {k: _entry(v) for k, v in dump[name]["weights"].items()},
                     "grads": {key: {k: _entry(v) for k, v in tensors.items()}
                               for key, tensors in dump[name]["grads"].items()}}
    text = json.dumps(out, indent=1, sort_keys=True)
    text = re.sub(r"\[\s+([^\]]*?)\s+\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text)
    Path(args.out).write_text(text + "\n")
    print(f"wrote {args.out}")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dump", help="gradients of a checkout's engine, saved with torch.save")
    d.add_argument("--tree", default=str(ROOT), help="a checkout of the workbench")
    d.add_argument("--out", required=True)
    c = sub.add_parser("compare", help="do two dumps agree bit for bit?")
    c.add_argument("a")
    c.add_argument("b")
    f = sub.add_parser("fixture", help="the test's reference (norms and sketches) from a dump")
    f.add_argument("dump")
    f.add_argument("--rev", required=True, help="the revision that computed the dump")
    f.add_argument("--machine", default="", help="where it was computed (recorded)")
    f.add_argument("--out", required=True)
    args = p.parse_args(argv)
    return {"dump": _dump, "compare": _compare, "fixture": _fixture}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
