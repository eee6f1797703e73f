"""``workbench bench``: speed, memory and fidelity of the EP estimators beside BP, as JSON.

**Speed** (``--measure speed``): every algorithm (``bp`` and the chosen EP schemes) runs
``--warmup`` untimed steps, then ``--repeats`` timed steps, round-robin over the algorithms in
one process on one batch, so that the EP/BP ratio compares like with like. A step is one
``workbench.engine.ep.estimate`` call as training makes it (``trace=False``, ``.grad`` written). Timed
with CUDA events on a GPU and ``time.perf_counter`` on the CPU (``--cpu-timer process``: CPU
time); the report holds the median ms per step, images/s, EP/BP time and, on CUDA, each
algorithm's peak memory. On CUDA ``cudnn.benchmark`` is on.

**General path** (``--measure general``): the same network as built-in layers and as plain torch
blocks through ``from_blocks`` (:func:`workbench.engine.models.as_blocks`, same weights), each algorithm
timed on both round-robin: the cost of differentiating blocks by autograd instead of the
closed-form linear algebra.

**Profile** (``--measure profile``): the operators that take one step's time (device time on a
GPU), per algorithm, from ``torch.profiler``.

**Fidelity** (``--measure fidelity``): per layer (weight and bias together), the cosine of the
estimate in the chosen precision with a float64 run of the *same* estimator (same β, K, weights,
batch and, for ``random``, the same signs), beside the cosine of BP in that precision with float64
BP. The fidelity rule (docs/method.md §7), per layer: ``cos(EP, EP_f64) ≥ cos(BP, BP_f64) − 0.002``.

``--loader`` instead times the ImageNet input pipeline alone
(:func:`workbench.data.imagenet.bench_loader`).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import statistics
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Optional

import torch

from . import flags, seeded
from .engine import ep, models
from .engine.precision import Precision, forward, fp32_math, precision_context
from .engine.settings import ALL_SCHEMES, EstimatorSettings
from .flags import option
from .training.runfolder import cpu_name

MEASURES = ("speed", "fidelity", "profile", "general")
CPU_TIMERS = ("wall", "process")
RULE_SLACK = 0.002

__all__ = ["MEASURES", "RULE_SLACK", "environment", "make_batch", "speed", "general_path",
           "profile", "fidelity", "add_arguments", "main"]


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
    """A seeded float32 model and a synthetic batch (:func:`workbench.seeded.batch`)."""
    return seeded.batch(model, batch_size, num_classes=num_classes, in_channels=in_channels,
                           image_size=image_size, seed=seed, device=device, **overrides)


def make_timer(device: torch.device, cpu_timer: str = "wall") -> Callable[[Callable], float]:
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


def make_step(net, x, y, algorithm: str, settings: EstimatorSettings) -> Callable[[], None]:
    """One training-like step of ``algorithm`` (``bp``, an EP scheme, or ``infer``)."""
    if algorithm == "infer":
        return lambda: _infer(net, x, settings.precision)
    gen = torch.Generator().manual_seed(0)
    s = settings.replace(scheme=algorithm)
    return lambda: ep.estimate(net, x, y, s, trace=False, accumulate=False, generator=gen)


def _infer(net, x, precision: str) -> torch.Tensor:
    """One forward pass without gradients, in BP's arithmetic for ``precision`` (strict: the
    parameters' dtype, TF32 off; fast: bf16 autocast, channels_last on CUDA) — the unit of the
    arithmetic floor (centered EP ≈ 43 forward passes, BP ≈ 3)."""
    prec = Precision.make(precision, x.dtype, x.device)
    with precision_context(prec), torch.no_grad():
        return forward(net, x, prec)


def _settings(settings: Optional[EstimatorSettings], overrides: dict) -> EstimatorSettings:
    """The bench's settings: strict unless asked otherwise, then ``overrides``."""
    return (settings or EstimatorSettings(precision="strict")).replace(**overrides)


def _timed(steps: dict, device: torch.device, warmup: int, repeats: int,
           cpu_timer: str) -> tuple[dict, dict]:
    """Run ``steps`` (name → fn) ``warmup`` times untimed, then ``repeats`` rounds round-robin;
    ``(times, peak)``: ms per run and (CUDA) peak bytes, per name."""
    cuda = device.type == "cuda"
    for fn in steps.values():
        for _ in range(warmup):
            fn()
    timer = make_timer(device, cpu_timer)
    times = {a: [] for a in steps}
    peak = {a: 0 for a in steps}
    for _ in range(repeats):
        for a, fn in steps.items():
            if cuda:
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
            times[a].append(timer(fn))
            if cuda:
                peak[a] = max(peak[a], torch.cuda.max_memory_allocated(device))
    return times, peak


def speed(net, x, y, algorithms, settings: Optional[EstimatorSettings] = None, *,
          warmup: int = 1, repeats: int = 5, cpu_timer: str = "wall", **overrides) -> dict:
    """Median ms per step, images/s, EP/BP time and (CUDA) peak memory per algorithm
    (``bp``, an EP scheme, or ``infer``: one forward pass without gradients), with
    ``settings`` (default: strict precision) and ``overrides`` of its fields."""
    s = _settings(settings, overrides)
    device = x.device
    cuda = device.type == "cuda"
    times, peak = _timed({a: make_step(net, x, y, a, s) for a in algorithms}, device, warmup,
                         repeats, cpu_timer)
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


def general_path(net, x, y, algorithms, settings: Optional[EstimatorSettings] = None, *,
                 warmup: int = 1, repeats: int = 5, cpu_timer: str = "wall",
                 **overrides) -> dict:
    """The general path (any block, by autograd) against the built-in fast path on the same
    network: ``net`` and :func:`workbench.engine.models.as_blocks` of it (same weights), every
    algorithm timed on both round-robin in one process. Per algorithm: the median ms of each
    and ``general_vs_builtin``, their ratio."""
    s = _settings(settings, overrides)
    twin = models.as_blocks(net)
    steps = {}
    for a in algorithms:
        steps[a, "builtin"] = make_step(net, x, y, a, s)
        steps[a, "general"] = make_step(twin, x, y, a, s)
    times, _ = _timed(steps, x.device, warmup, repeats, cpu_timer)
    out = {}
    for a in algorithms:
        b, g = (statistics.median(times[a, path]) for path in ("builtin", "general"))
        out[a] = {"builtin_ms": b, "general_ms": g, "general_vs_builtin": g / b}
    return out


# where a profiled operator's time is counted: the first group whose keyword occurs in the name
# of the outermost operator that (indirectly) ran it
CATEGORIES = (("compiled (fused)", ("compiled", "triton")),
              ("convolution", ("conv", "cudnn")),
              ("matmul", ("linear", "addmm", "matmul", "aten::mm", "bmm")),
              ("pooling", ("pool", "upsample", "interpolate")),
              ("cast / copy", ("aten::to", "copy", "contiguous", "clone")))


# profiler events on the device timeline that are not work (the host waiting on a full launch
# queue): left out of the categories and of the busy time
MARKERS = ("Command Buffer Full",)


def category(name: str) -> str:
    low = name.lower()
    for label, keys in CATEGORIES:
        if any(k in low for k in keys):
            return label
    return "elementwise / other"


def _outermost(e):
    while getattr(e, "cpu_parent", None) is not None:
        e = e.cpu_parent
    return e


def busy_and_span(intervals) -> tuple[float, float]:
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


def profile(net, x, y, algorithm: str = "centered", settings: Optional[EstimatorSettings] = None,
            *, top: int = 15, **overrides) -> dict:
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

    s = _settings(settings, overrides)
    step = make_step(net, x, y, algorithm, s)
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
            if e.name not in MARKERS:
                device_intervals.append((e.time_range.start, e.time_range.end))
            continue
        if e.device_type != DeviceType.CPU:
            continue
        us = sum(k.duration for k in e.kernels if k.name not in MARKERS) if cuda \
            else e.self_cpu_time_total
        if us > 0:
            label = category(_outermost(e).name)
            cats[label] = cats.get(label, 0.0) + us
    counted = sum(cats.values()) or 1.0
    out = {"clock": "device" if cuda else "cpu", "algorithm": algorithm, "precision": s.precision,
           "batch_size": x.shape[0], "total_ms": total / 1e3, "wall_ms": wall_ms,
           "ops": [{"name": e.key, "calls": e.count, "ms": self_us(e) / 1e3,
                    "share": self_us(e) / total} for e in events[:top]],
           "categories": {k: {"ms": v / 1e3, "share": v / counted}
                          for k, v in sorted(cats.items(), key=lambda kv: -kv[1])}}
    if cuda:
        busy, span = busy_and_span(device_intervals)
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


def fidelity(net, x, y, schemes, settings: Optional[EstimatorSettings] = None, *,
             precisions=("strict",), betas=(0.05,), reference_device=None, seed: int = 0,
             **overrides) -> dict:
    """Per-layer cosines with float64 runs of the same computation, and the rule's verdict.

    Returns ``{"bp": {precision: [cos(BP, BP_f64) per layer]}, "betas": {β: {scheme:
    {precision: {"cosine": [...], "margin": [cos − (cos_bp − 0.002)], "pass": bool}}}},
    "pass": bool}``; each float64 reference is computed once and shared by the precisions.
    """
    s = _settings(settings, overrides)
    ref_dev = torch.device(reference_device or x.device)
    net64 = copy.deepcopy(net).to(ref_dev, torch.float64)
    x64, y64 = x.to(ref_dev, torch.float64), y.to(ref_dev)
    bp64, _, _ = ep.bp_gradients(net64, x64, y64, s.cost, "strict")
    cos_bp = {p: _cosines(net, ep.bp_gradients(net, x, y, s.cost, p)[0], bp64)
              for p in precisions}
    signs = ep.random_signs(x.shape[0], torch.Generator().manual_seed(seed))
    result = {"reference": f"float64 on {ref_dev}", "bp": cos_bp, "betas": {}, "pass": True}
    for beta in betas:
        rows = result["betas"][str(beta)] = {}
        for scheme in schemes:
            b = s.replace(scheme=scheme, beta=beta)
            ref = ep.estimate(net64, x64, y64, b, precision="strict", fused=False, trace=False,
                              accumulate=False,
                              signs=signs.to(ref_dev, torch.float64) if scheme == "random"
                              else None).grads
            rows[scheme] = {}
            for p in precisions:
                est = ep.estimate(net, x, y, b, precision=p, trace=False, accumulate=False,
                                  signs=signs.to(x.device, x.dtype) if scheme == "random"
                                  else None)
                cos = _cosines(net, est.grads, ref)
                margin = [None if c is None else c - (bb - RULE_SLACK)
                          for c, bb in zip(cos, cos_bp[p])]
                ok = all(m is not None and math.isfinite(m) and m >= 0 for m in margin)
                rows[scheme][p] = {"cosine": cos, "margin": margin, "pass": ok}
                result["pass"] = result["pass"] and ok
    net.zero_grad(set_to_none=True)
    return result


# ---------------------------------------------------------------------------------------------
# the command
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BenchOptions:
    """What ``workbench bench`` measures (the estimate itself: :class:`EstimatorSettings`,
    whose ``scheme`` is replaced by ``schemes``)."""
    model: str = option("vgg5", "model name")
    image_size: Optional[int] = option(None, "input size (default: the model's registry size)")
    in_channels: int = option(3, "input channels")
    num_classes: int = option(10, "classes")
    batch_size: int = option(64, "images per step")
    schemes: tuple[str, ...] = option(("bp", "centered"), "algorithms to time", ALL_SCHEMES)
    measure: tuple[str, ...] = option(("speed",), "what to measure", MEASURES)
    warmup: int = option(1, "untimed steps first")
    repeats: int = option(5, "timed steps (median reported)")
    cpu_timer: str = option("wall", "CPU only: wall (perf_counter) or process (process_time)",
                            CPU_TIMERS)
    fidelity_betas: tuple[float, ...] = option((0.05, 0.005, 0.0005), "β of the fidelity rule")
    fidelity_batch: int = option(16, "images of the fidelity batch")
    reference_device: Optional[str] = option(None, "where the float64 reference runs "
                                             "(default: --device)")
    device: Optional[str] = option(None, "default: cuda if available, else cpu")
    threads: Optional[int] = option(None, "CPU threads (torch.set_num_threads)")
    seed: int = option(0, "seed of the model and the batch")
    model_args: dict = option(default_factory=dict, kind="name_value",
                              help="model override NAME=VALUE (JSON value), e.g. width=16; "
                                   "repeatable")
    out: Optional[str] = option(None, "also write the JSON to this file")
    loader: bool = option(False, "time the ImageNet input pipeline alone instead")
    data_root: Optional[str] = option(None, "--loader: an ImageNet folder (default: generated "
                                      "JPEGs in a temporary folder)")
    workers: Optional[int] = option(None, "--loader: worker processes (default: all cores)")
    batches: int = option(20, "--loader: batches to time")
    gpu_decode: bool = option(False, "--loader: decode JPEGs on the GPU")
    estimator: EstimatorSettings = option(
        default_factory=lambda: EstimatorSettings(precision="strict"), help="the estimate")


def add_arguments(p: argparse.ArgumentParser) -> None:
    flags.add_flags(p, BenchOptions(), skip=("scheme",), choices={"model": models.available()})


def options_from_args(args) -> BenchOptions:
    given = flags.given(args, BenchOptions, skip=("scheme",))
    est = BenchOptions().estimator.replace(**given.pop("estimator", {}))
    return dataclasses.replace(BenchOptions(), **given, estimator=est)


def _check(o: BenchOptions) -> None:
    for name in ("batch_size", "repeats", "fidelity_batch", "batches"):
        if getattr(o, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(o, name)}")
    if o.warmup < 0:
        raise ValueError(f"--warmup must be >= 0, got {o.warmup}")
    if any(b <= 0 for b in o.fidelity_betas):
        raise ValueError("--fidelity-betas take values > 0")
    if o.device and o.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {o.device}: CUDA is not available on this machine "
                         f"(torch {torch.__version__}); use --device cpu")


def _loader(args: BenchOptions, device: torch.device) -> dict:
    try:
        from .data.imagenet import bench_loader
    except ImportError as e:
        raise ValueError(f"--loader needs workbench.data.imagenet.bench_loader: {e}") from e
    kw = {} if args.workers is None else {"workers": args.workers}
    return bench_loader(data_root=args.data_root, image_size=args.image_size or 224,
                        batch_size=args.batch_size, batches=args.batches,
                        gpu_decode=args.gpu_decode, device=str(device), **kw)


def run(args) -> dict:
    o = args if isinstance(args, BenchOptions) else options_from_args(args)
    _check(o)
    s = o.estimator
    device = torch.device(o.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if o.threads:
        torch.set_num_threads(o.threads)
    torch.backends.cudnn.benchmark = device.type == "cuda"
    if o.loader:
        return {"loader": _loader(o, device), **environment(device)}
    size = o.image_size or models.default_image_size(o.model)
    out = {"model": o.model, "image_size": size, "in_channels": o.in_channels,
           "num_classes": o.num_classes, "model_args": dict(o.model_args),
           **s.replace(scheme="centered").to_dict(), **environment(device)}
    out.pop("scheme")

    def batch(n):
        return make_batch(o.model, size, o.in_channels, o.num_classes, n, device, o.seed,
                          **o.model_args)

    if "speed" in o.measure:
        net, x, y = batch(o.batch_size)
        out["speed"] = {"batch_size": o.batch_size, "beta": s.beta, "warmup": o.warmup,
                        "repeats": o.repeats,
                        "timer": "cuda events" if device.type == "cuda" else
                        {"wall": "perf_counter", "process": "process_time"}[o.cpu_timer],
                        "algorithms": speed(net, x, y, o.schemes, s, warmup=o.warmup,
                                            repeats=o.repeats, cpu_timer=o.cpu_timer)}
    if "general" in o.measure:
        net, x, y = batch(o.batch_size)
        out["general"] = {"batch_size": o.batch_size, "repeats": o.repeats,
                          "algorithms": general_path(net, x, y, o.schemes, s, warmup=o.warmup,
                                                     repeats=o.repeats, cpu_timer=o.cpu_timer)}
    if "profile" in o.measure:
        net, x, y = batch(o.batch_size)
        out["profile"] = {a: profile(net, x, y, a, s) for a in o.schemes}
    if "fidelity" in o.measure:
        net, x, y = batch(o.fidelity_batch)
        schemes = [a for a in o.schemes if a != "bp"] or ["centered"]
        out["fidelity"] = {"batch_size": o.fidelity_batch, "rule_slack": RULE_SLACK,
                           **fidelity(net, x, y, schemes, s, precisions=[s.precision],
                                      betas=o.fidelity_betas,
                                      reference_device=o.reference_device, seed=o.seed)}
    return out


def main(args) -> int:
    out = run(args)
    text = json.dumps(out, indent=2)
    print(text)
    if getattr(args, "out", None):
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0
