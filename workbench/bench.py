"""``workbench bench``: speed, memory and fidelity of the EP estimators beside BP, as JSON.

**Speed** (``--measure speed``): every algorithm (``bp`` and the chosen EP schemes) runs
``--warmup`` untimed steps, then ``--repeats`` timed steps, round-robin over the algorithms in
one process on one batch, so that the EP/BP ratio compares like with like. A step is one
``workbench.ep.estimate`` call as training makes it (``trace=False``, ``.grad`` written). Timed
with CUDA events on a GPU and ``time.perf_counter`` on the CPU (``--cpu-timer process``: CPU
time); the report holds the median ms per step, images/s, EP/BP time and, on CUDA, each
algorithm's peak memory. On CUDA ``cudnn.benchmark`` is on.

**Profile** (``--measure profile``): the operators that take one step's time (device time on a
GPU), per algorithm, from ``torch.profiler``.

**Fidelity** (``--measure fidelity``): per layer (weight and bias together), the cosine of the
estimate in the chosen precision with a float64 run of the *same* estimator (same β, K, weights,
batch and, for ``random``, the same signs), beside the cosine of BP in that precision with float64
BP. Issue 6's rule, per layer: ``cos(EP, EP_f64) ≥ cos(BP, BP_f64) − 0.002``.

``--loader`` instead times the ImageNet input pipeline alone
(:func:`workbench.data.imagenet.bench_loader`).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import time
from datetime import datetime, timezone
from typing import Callable

import torch

from . import ep, models
from .energy import COSTS
from .precision import PRECISIONS, Precision, fp32_math, precision_context
from .runfolder import cpu_name

MEASURES = ("speed", "fidelity", "profile")
CPU_TIMERS = ("wall", "process")
DEFAULT_SIZES = {"mlp": 28, "vgg5": 32, "vgg10": 224}
RULE_SLACK = 0.002

__all__ = ["MEASURES", "RULE_SLACK", "environment", "make_batch", "speed", "profile",
           "fidelity", "add_arguments", "main"]


# ---------------------------------------------------------------------------------------------
# building blocks (also used by bench/gpu_check.py)
# ---------------------------------------------------------------------------------------------
def environment(device: torch.device) -> dict:
    """Where a measurement ran: card or CPU, torch version, thread count, UTC time."""
    if device.type == "cuda":
        hardware = torch.cuda.get_device_name(device)
    else:
        hardware = f"{cpu_name()}, {torch.get_num_threads()} threads"
    return {"device": str(device), "hardware": hardware, "torch": torch.__version__,
            "cuda": torch.version.cuda if device.type == "cuda" else None,
            "cudnn_benchmark": torch.backends.cudnn.benchmark, "fp32_math": fp32_math(),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}


def make_batch(model: str, image_size: int, in_channels: int, num_classes: int,
               batch_size: int, device: torch.device, seed: int = 0, **overrides):
    """A seeded model (float32; ``overrides`` go to :func:`workbench.models.build`) and a
    synthetic batch: uniform [0, 1) pixels, random labels."""
    torch.manual_seed(seed)
    net = models.build(model, num_classes=num_classes, in_channels=in_channels,
                       image_size=image_size, **overrides).to(device)
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand((batch_size, in_channels, image_size, image_size), generator=gen)
    y = torch.randint(0, num_classes, (batch_size,), generator=gen)
    return net, x.to(device), y.to(device)


def _timer(device: torch.device, cpu_timer: str = "wall") -> Callable[[Callable], float]:
    """Returns ``run(fn) -> ms``: CUDA events on a GPU; on the CPU ``time.perf_counter``
    (``wall``) or ``time.process_time`` (``process``: CPU seconds of this process, all threads —
    steadier than wall time on a machine shared with other jobs)."""
    if device.type == "cuda":
        def run(fn):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)
    else:
        clock = time.perf_counter if cpu_timer == "wall" else time.process_time

        def run(fn):
            t0 = clock()
            fn()
            return (clock() - t0) * 1e3
    return run


def _step(net, x, y, algorithm: str, precision: str, beta: float, iterations: int, cost: str,
          fused: bool) -> Callable[[], None]:
    gen = torch.Generator().manual_seed(0)
    if algorithm == "infer":
        return lambda: _infer(net, x, precision)
    if algorithm == "bp":
        return lambda: ep.estimate(net, x, y, scheme="bp", cost=cost, precision=precision,
                                   accumulate=False)
    return lambda: ep.estimate(net, x, y, scheme=algorithm, beta=beta, iterations=iterations,
                               cost=cost, precision=precision, trace=False, accumulate=False,
                               generator=gen, fused=fused)


def _infer(net, x, precision: str) -> torch.Tensor:
    """One forward pass without gradients, in BP's arithmetic for ``precision`` (strict: the
    parameters' dtype, TF32 off; fast: bf16 autocast, channels_last on CUDA) — the unit of the
    arithmetic floor (centered EP ≈ 43 forward passes, BP ≈ 3)."""
    prec = Precision.make(precision, x.dtype, x.device)
    with precision_context(prec), torch.no_grad():
        if prec.name == "fast":
            with torch.autocast(x.device.type, dtype=torch.bfloat16):
                return net(x.contiguous(memory_format=torch.channels_last)
                           if prec.channels_last else x)
        return net(x)


def speed(net, x, y, algorithms, *, precision: str = "strict", beta: float = 0.05,
          iterations: int = 10, cost: str = "ce", warmup: int = 1, repeats: int = 5,
          fused: bool = False, cpu_timer: str = "wall") -> dict:
    """Median ms per step, images/s, EP/BP time and (CUDA) peak memory per algorithm
    (``bp``, an EP scheme, or ``infer``: one forward pass without gradients)."""
    device = x.device
    cuda = device.type == "cuda"
    steps = {a: _step(net, x, y, a, precision, beta, iterations, cost, fused) for a in algorithms}
    for fn in steps.values():
        for _ in range(warmup):
            fn()
    timer = _timer(device, cpu_timer)
    times = {a: [] for a in algorithms}
    peak = {a: 0 for a in algorithms}
    for _ in range(repeats):
        for a, fn in steps.items():
            if cuda:
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
            times[a].append(timer(fn))
            if cuda:
                peak[a] = max(peak[a], torch.cuda.max_memory_allocated(device))
    out = {}
    for a in algorithms:
        ms = statistics.median(times[a])
        out[a] = {"ms_per_step": ms, "images_per_s": x.shape[0] / ms * 1e3,
                  "ms_all": [round(t, 3) for t in times[a]],
                  "peak_memory_mib": peak[a] / 2 ** 20 if cuda else None}
    if "bp" in out:
        for a in algorithms:
            out[a]["time_vs_bp"] = out[a]["ms_per_step"] / out["bp"]["ms_per_step"]
    return out


# where a profiled operator's time is counted: the first group whose keyword occurs in the name
# of the outermost operator that (indirectly) ran it
CATEGORIES = (("compiled (fused)", ("compiled", "triton")),
              ("convolution", ("conv", "cudnn")),
              ("matmul", ("linear", "addmm", "matmul", "aten::mm", "bmm")),
              ("pooling", ("pool", "upsample", "interpolate")),
              ("cast / copy", ("aten::to", "copy", "contiguous", "clone")))


def _category(name: str) -> str:
    low = name.lower()
    for label, keys in CATEGORIES:
        if any(k in low for k in keys):
            return label
    return "elementwise / other"


def _outermost(e):
    while getattr(e, "cpu_parent", None) is not None:
        e = e.cpu_parent
    return e


def _union_us(intervals) -> tuple[float, float]:
    """``(busy, span)`` of ``[(start, end), …]`` in µs: covered length and first-to-last."""
    intervals = sorted(intervals)
    if not intervals:
        return 0.0, 0.0
    busy, (lo, hi) = 0.0, intervals[0]
    first, last = lo, hi
    for s, e in intervals[1:]:
        last = max(last, e)
        if s > hi:
            busy += hi - lo
            lo, hi = s, e
        else:
            hi = max(hi, e)
    return busy + hi - lo, last - first


def profile(net, x, y, algorithm: str = "centered", *, precision: str = "strict",
            beta: float = 0.05, iterations: int = 10, cost: str = "ce", fused: bool = False,
            top: int = 15) -> dict:
    """Where one step's time goes: ``torch.profiler`` over one step after a warm-up step.

    Returns ``{"clock": "device" | "cpu", "total_ms", "ops": [{"name", "calls", "ms",
    "share"}, …], "categories": {label: {"ms", "share"}}, …}``: the ``top`` operators by self
    time (device time on a GPU), and the same time grouped by the outermost operator that ran
    it (:data:`CATEGORIES`: convolutions, matmuls, pooling, casts, elementwise). On a GPU also
    ``wall_ms`` (the step on the host clock), ``span_ms`` (first kernel start to last kernel
    end), ``busy_ms`` (time some kernel or copy ran) and ``gaps_ms = span − busy``: the device
    idle between launches, which CUDA graphs would remove.
    """
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile as torch_profile

    step = _step(net, x, y, algorithm, precision, beta, iterations, cost, fused)
    step()
    cuda = x.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    if cuda:
        torch.cuda.synchronize(x.device)
    with torch_profile(activities=activities) as prof:
        t0 = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize(x.device)
        wall_ms = (time.perf_counter() - t0) * 1e3

    def self_us(e):
        if not cuda:
            return e.self_cpu_time_total
        return getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)

    events = [e for e in prof.key_averages() if self_us(e) > 0]
    total = sum(self_us(e) for e in events)
    events.sort(key=self_us, reverse=True)
    cats: dict = {}
    device_intervals = []
    for e in prof.events():
        if cuda and e.device_type == DeviceType.CUDA:
            device_intervals.append((e.time_range.start, e.time_range.end))
            continue
        if e.device_type != DeviceType.CPU:
            continue
        us = sum(k.duration for k in e.kernels) if cuda else e.self_cpu_time_total
        if us > 0:
            label = _category(_outermost(e).name)
            cats[label] = cats.get(label, 0.0) + us
    counted = sum(cats.values()) or 1.0
    out = {"clock": "device" if cuda else "cpu", "algorithm": algorithm, "precision": precision,
           "batch_size": x.shape[0], "total_ms": total / 1e3, "wall_ms": wall_ms,
           "ops": [{"name": e.key, "calls": e.count, "ms": self_us(e) / 1e3,
                    "share": self_us(e) / total} for e in events[:top]],
           "categories": {k: {"ms": v / 1e3, "share": v / counted}
                          for k, v in sorted(cats.items(), key=lambda kv: -kv[1])}}
    if cuda:
        busy, span = _union_us(device_intervals)
        out.update(kernels=len(device_intervals), busy_ms=busy / 1e3, span_ms=span / 1e3,
                   gaps_ms=(span - busy) / 1e3)
    return out


def _cosines(net, grads, ref) -> list:
    """Per-layer cosine; 1.0 where both are exactly zero (a layer the nudge has not reached
    within K iterations: identical), None where only one of them is."""
    out = []
    for row in ep.compare(net, grads, ref):
        if row["norm"] == 0 or row["ref_norm"] == 0:
            out.append(1.0 if row["norm"] == row["ref_norm"] else None)
        else:
            out.append(row["cosine"])
    return out


def fidelity(net, x, y, schemes, *, precisions=("strict",), betas=(0.05,), iterations: int = 10,
             cost: str = "ce", reference_device=None, fused: bool = False, seed: int = 0) -> dict:
    """Per-layer cosines with float64 runs of the same computation, and the rule's verdict.

    Returns ``{"bp": {precision: [cos(BP, BP_f64) per layer]}, "betas": {β: {scheme:
    {precision: {"cosine": [...], "margin": [cos − (cos_bp − 0.002)], "pass": bool}}}},
    "pass": bool}``; each float64 reference is computed once and shared by the precisions.
    """
    ref_dev = torch.device(reference_device or x.device)
    net64 = copy.deepcopy(net).to(ref_dev, torch.float64)
    x64, y64 = x.to(ref_dev, torch.float64), y.to(ref_dev)
    bp64, _, _ = ep.bp_gradients(net64, x64, y64, cost, "strict")
    cos_bp = {p: _cosines(net, ep.bp_gradients(net, x, y, cost, p)[0], bp64) for p in precisions}
    draw = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, (x.shape[0],), generator=draw) * 2 - 1
    result = {"reference": f"float64 on {ref_dev}", "bp": cos_bp, "betas": {}, "pass": True}
    for beta in betas:
        rows = result["betas"][str(beta)] = {}
        for scheme in schemes:
            kw = dict(scheme=scheme, beta=beta, iterations=iterations, cost=cost, trace=False,
                      accumulate=False)
            if scheme == "random":
                kw["signs"] = signs.to(ref_dev, torch.float64)
            ref = ep.estimate(net64, x64, y64, precision="strict", **kw).grads
            if scheme == "random":
                kw["signs"] = signs.to(x.device, x.dtype)
            rows[scheme] = {}
            for p in precisions:
                est = ep.estimate(net, x, y, precision=p, fused=fused, **kw)
                cos = _cosines(net, est.grads, ref)
                margin = [None if c is None else c - (b - RULE_SLACK)
                          for c, b in zip(cos, cos_bp[p])]
                ok = all(m is not None and math.isfinite(m) and m >= 0 for m in margin)
                rows[scheme][p] = {"cosine": cos, "margin": margin, "pass": ok}
                result["pass"] = result["pass"] and ok
    net.zero_grad(set_to_none=True)
    return result


# ---------------------------------------------------------------------------------------------
# the command
# ---------------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="vgg5", choices=models.available())
    p.add_argument("--image-size", type=int, default=None,
                   help="default: 28 for mlp, 32 for vgg5, 224 for vgg10")
    p.add_argument("--in-channels", type=int, default=3)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--precision", default="strict", choices=PRECISIONS)
    p.add_argument("--schemes", nargs="+", default=["bp", "centered"], choices=ep.ALL_SCHEMES,
                   metavar="SCHEME", help=f"any of {', '.join(ep.ALL_SCHEMES)} "
                   "(default: bp centered)")
    p.add_argument("--measure", nargs="+", default=["speed"], choices=MEASURES)
    p.add_argument("--beta", type=float, default=0.05, help="β for the speed runs")
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--cost", default="ce", choices=COSTS)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--cpu-timer", default="wall", choices=CPU_TIMERS,
                   help="CPU only: wall (perf_counter, default) or process (process_time)")
    p.add_argument("--fidelity-betas", type=float, nargs="+", default=[0.05, 0.005, 0.0005])
    p.add_argument("--fidelity-batch", type=int, default=16)
    p.add_argument("--reference-device", default=None,
                   help="where the float64 reference runs (default: --device)")
    p.add_argument("--fused", action="store_true",
                   help="compile the elementwise work with torch.compile (see BENCHMARKS.md)")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="also write the JSON to this file")
    g = p.add_argument_group("input pipeline (--loader: time workbench.data.imagenet alone)")
    g.add_argument("--loader", action="store_true")
    g.add_argument("--data-root", default=None,
                   help="an ImageNet folder (default: generated JPEGs in a temporary folder)")
    g.add_argument("--workers", type=int, default=None, help="default: all CPU cores")
    g.add_argument("--batches", type=int, default=20)
    g.add_argument("--gpu-decode", action="store_true")


def _check(args) -> None:
    for name in ("batch_size", "repeats", "iterations", "fidelity_batch", "batches"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0:
        raise ValueError(f"--warmup must be >= 0, got {args.warmup}")
    if args.beta <= 0 or any(b <= 0 for b in args.fidelity_betas):
        raise ValueError("--beta and --fidelity-betas take values > 0")
    if args.device and args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: CUDA is not available on this machine "
                         f"(torch {torch.__version__}); use --device cpu")


def _loader(args, device: torch.device) -> dict:
    try:
        from .data.imagenet import bench_loader
    except ImportError as e:
        raise ValueError(f"--loader needs workbench.data.imagenet.bench_loader: {e}") from e
    kw = {} if args.workers is None else {"workers": args.workers}
    return bench_loader(data_root=args.data_root, image_size=args.image_size or 224,
                        batch_size=args.batch_size, batches=args.batches,
                        gpu_decode=args.gpu_decode, device=str(device), **kw)


def run(args) -> dict:
    _check(args)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cudnn.benchmark = device.type == "cuda"
    if args.loader:
        return {"loader": _loader(args, device), **environment(device)}
    size = args.image_size or DEFAULT_SIZES.get(args.model, 32)
    out = {"model": args.model, "image_size": size, "in_channels": args.in_channels,
           "num_classes": args.num_classes, "precision": args.precision, "cost": args.cost,
           "iterations": args.iterations, "fused": args.fused, **environment(device)}
    if "speed" in args.measure:
        net, x, y = make_batch(args.model, size, args.in_channels, args.num_classes,
                               args.batch_size, device, args.seed)
        out["speed"] = {"batch_size": args.batch_size, "beta": args.beta,
                        "warmup": args.warmup, "repeats": args.repeats,
                        "timer": "cuda events" if device.type == "cuda" else
                        {"wall": "perf_counter", "process": "process_time"}[args.cpu_timer],
                        "algorithms": speed(net, x, y, args.schemes, precision=args.precision,
                                            beta=args.beta, iterations=args.iterations,
                                            cost=args.cost, warmup=args.warmup,
                                            repeats=args.repeats, fused=args.fused,
                                            cpu_timer=args.cpu_timer)}
    if "profile" in args.measure:
        net, x, y = make_batch(args.model, size, args.in_channels, args.num_classes,
                               args.batch_size, device, args.seed)
        out["profile"] = {a: profile(net, x, y, a, precision=args.precision, beta=args.beta,
                                     iterations=args.iterations, cost=args.cost,
                                     fused=args.fused) for a in args.schemes}
    if "fidelity" in args.measure:
        net, x, y = make_batch(args.model, size, args.in_channels, args.num_classes,
                               args.fidelity_batch, device, args.seed)
        schemes = [s for s in args.schemes if s != "bp"] or ["centered"]
        out["fidelity"] = {"batch_size": args.fidelity_batch, "rule_slack": RULE_SLACK,
                           **fidelity(net, x, y, schemes, precisions=[args.precision],
                                      betas=args.fidelity_betas, iterations=args.iterations,
                                      cost=args.cost, reference_device=args.reference_device,
                                      fused=args.fused, seed=args.seed)}
    return out


def main(args) -> int:
    out = run(args)
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0
