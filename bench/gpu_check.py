"""The GPU checks in one process: correctness on CUDA, speed, fidelity, memory, a profile and
real training, printed as one table (the JSON goes to ``$OUT``).

Run it through ``bench/gpu_check.sh`` (see ``--help``). On one H200 the default plan takes about
7 minutes; sections that would start after ``--budget-s`` seconds are skipped with a note, and
a section that fails (e.g. out of memory) is recorded and the next one runs.

Sections, in the default order (VGG10 at 224×224, 1000 classes, K = 10, synthetic data, seeded,
unless said otherwise):

* ``tests``     ``pytest -m gpu``: strict fp32 on CUDA against float64 on the CPU, the fidelity
  rule on small models, device JPEG decode against the CPU path, exact resume on CUDA.
* ``speed``     batch 128; BP and the EP schemes, strict (fp32, TF32 off) and fast (BP: bf16
  autocast + channels_last; EP: bf16 convs on fp32 deviations); images/s, EP/BP time, peak
  memory, and the targets (centered ≥ 600 img/s, one-phase schemes ≥ 1,100 img/s, EP/BP ≤ 12×).
* ``profile``   where one centered step's device time goes (fast and strict, batch 128):
  convolutions / matmuls / pooling / casts / elementwise, the device idle between launches,
  and the top operators by self time.
* ``fidelity``  batch 16; per layer, cos(EP, EP_float64 of the same estimator) for β ∈ {0.05,
  0.005, 0.0005} in fast and strict precision, beside cos(BP, BP_float64) in the same precision;
  the rule cos(EP_fast, EP_f64) ≥ cos(BP_bf16, BP_f64) − 0.002 per layer.
* ``memory``    centered EP at batch 64, 128, 256: peak memory.
* ``train``     vgg5 (the paper's fan_in initialisation) on Fashion-MNIST, centered EP (β =
  0.02, K = 5) and BP, cross-entropy, batch 64, each time-boxed (``--train-seconds``): a
  short calibration run sets the number of epochs (or training images) that fits; test error
  and images/s. Needs the four IDX files under ``--data-root``.
* ``fused``     the speed section's fast runs with ``fused=True`` (torch.compile), beside BP.
* ``profile-fused``  the profile of centered fast EP with ``fused=True``.
* ``fidelity-fused`` the fidelity rule for fast EP with ``fused=True`` (centered, random,
  forward), with the free phase's fp32 convolutions under PyTorch's default (TF32 on CUDA)
  and with TF32 off (``Precision.free_ieee``, the default).
* ``convs``     the rounding of single fp32 convolutions on CUDA in strict mode (cuDNN's
  choice, benchmark, deterministic) and with TF32, against float64.
* ``general``   the general path (any block as a layer; strict precision only): resnet18 at
  224×224 (BatchNorm in train mode, batch 8 for fidelity, 64 for speed, K = 10) and a small
  vit (32 px, K = 6): per-layer cosines of centered EP (β = 0.005, batch signs) and BP with
  float64 runs on the CPU, and ms per step of BP and centered EP on the device.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from workbench import bench

FULL = dict(model="vgg10", image_size=224, in_channels=3, num_classes=1000, overrides={},
            iterations=10, betas=(0.05, 0.005, 0.0005), fidelity_batch=16,
            fidelity_schemes=("centered", "random"), speed_batch=128,
            algorithms=("infer", "bp", "forward", "centered", "random"),
            precisions=("strict", "fast"), memory_batches=(64, 128, 256), warmup=2, repeats=3,
            train=dict(dataset="fashion-mnist", model="vgg5", image_size=32,
                       model_args={}, batch_size=64, beta=0.02,
                       iterations=5, lr=0.01, workers=4, limit_test=None, calibration_steps=40))
SMOKE = {**FULL, "image_size": 32, "num_classes": 10, "iterations": 6,
         "overrides": dict(channels=(4, 4, 6, 6, 8, 8, 8, 8), dense=16), "fidelity_batch": 4,
         "speed_batch": 4, "memory_batches": (2, 4), "warmup": 1, "repeats": 1,
         "train": dict(dataset="synthetic", model="mlp", image_size=8,
                       model_args={"widths": [16]}, batch_size=16, beta=0.05, iterations=3,
                       lr=0.05, workers=0, limit_test=64, calibration_steps=3)}
# the general path (any block as a layer, strict precision only): per-layer fidelity against
# float64 on the CPU, and EP beside BP
GENERAL_FULL = {"resnet18": dict(image_size=224, num_classes=1000, overrides={}, iterations=10,
                                 fidelity_batch=8, speed_batch=64),
                "vit": dict(image_size=32, num_classes=10, overrides={}, iterations=6,
                            fidelity_batch=16, speed_batch=128)}
GENERAL_SMOKE = {"resnet18": dict(image_size=32, num_classes=10, overrides=dict(width=4),
                                  iterations=4, fidelity_batch=4, speed_batch=4),
                 "vit": dict(image_size=16, num_classes=10,
                             overrides=dict(patch=8, dim=8, depth=1, heads=2), iterations=4,
                             fidelity_batch=4, speed_batch=4)}
TARGETS = {"centered": 600.0, "forward": 1100.0, "backward": 1100.0, "random": 1100.0}
MAX_RATIO = 12.0
SECTIONS = ("tests", "speed", "profile", "fidelity", "memory", "train", "fused",
            "profile-fused", "fidelity-fused", "convs", "general")
DEFAULT_SECTIONS = ("tests", "speed", "profile", "fidelity", "memory", "train")


def parse(argv):
    p = argparse.ArgumentParser(
        prog="bench/gpu_check.sh", description=__doc__.split("\n\n")[0],
        epilog="Writes gpu_check.json to --out (default: $OUT when set). Needs CUDA unless "
               "--cpu-smoke; exits 1 with a message when no GPU is visible.")
    p.add_argument("--cpu-smoke", action="store_true",
                   help="tiny CPU dry run of every section (seconds; what CI runs)")
    p.add_argument("--sections", nargs="+", default=list(DEFAULT_SECTIONS), choices=SECTIONS,
                   help=f"run in this order (default: {' '.join(DEFAULT_SECTIONS)})")
    p.add_argument("--fused", action="store_true", help="also run the 'fused' section (last)")
    p.add_argument("--budget-s", type=float, default=420.0,
                   help="skip sections that would start later than this (default 420)")
    p.add_argument("--tf32-free", action="store_true",
                   help="fidelity-fused: also with the free phase under TF32 (as in run 2 of "
                   "BENCHMARKS.md)")
    p.add_argument("--train-seconds", type=float, default=70.0,
                   help="time box of each training run of the 'train' section (default 70)")
    p.add_argument("--data-root", default="data",
                   help="where the 'train' section finds Fashion-MNIST (default: ./data; "
                   "copy the four IDX .gz files to data/fashion-mnist/)")
    p.add_argument("--out", default=os.environ.get("OUT"),
                   help="folder for gpu_check.json (default: $OUT)")
    return p.parse_args(argv)


def fidelity_section(cfg, device):
    net, x, y = bench.make_batch(cfg["model"], cfg["image_size"], cfg["in_channels"],
                                 cfg["num_classes"], cfg["fidelity_batch"], device,
                                 **cfg["overrides"])
    return bench.fidelity(net, x, y, cfg["fidelity_schemes"], precisions=cfg["precisions"],
                          betas=cfg["betas"], iterations=cfg["iterations"])


def speed_section(cfg, device, fused=False):
    net, x, y = bench.make_batch(cfg["model"], cfg["image_size"], cfg["in_channels"],
                                 cfg["num_classes"], cfg["speed_batch"], device,
                                 **cfg["overrides"])
    precisions = ("fast",) if fused else cfg["precisions"]
    return {p: bench.speed(net, x, y, cfg["algorithms"], precision=p,
                           iterations=cfg["iterations"], warmup=cfg["warmup"],
                           repeats=cfg["repeats"], fused=fused) for p in precisions}


def general_section(specs, cfg, device):
    """resnet18 (BatchNorm in train mode) and vit through the general path, strict fp32 on
    ``device``: per-layer cosines of centered EP and BP with float64 runs on the CPU (the
    fidelity rule of docs/method.md) beside the same comparison in fp32 on the CPU, then ms per
    step of BP and centered EP."""
    out = {}
    for name, spec in specs.items():
        net, x, y = bench.make_batch(name, spec["image_size"], 3, spec["num_classes"],
                                     spec["fidelity_batch"], device, **spec["overrides"])
        fid = bench.fidelity(net, x, y, ("centered",), precisions=("strict",),
                             betas=(0.005,), iterations=spec["iterations"],
                             reference_device="cpu", signs="batch")
        # the yardstick of fp32 rounding: the same comparison in fp32 on the CPU (a layer whose
        # EP difference cancels in fp32 has a low cosine there too)
        yard = bench.fidelity(copy.deepcopy(net).cpu(), x.cpu(), y.cpu(), ("centered",),
                              precisions=("strict",), betas=(0.005,),
                              iterations=spec["iterations"], signs="batch")
        net, x, y = bench.make_batch(name, spec["image_size"], 3, spec["num_classes"],
                                     spec["speed_batch"], device, **spec["overrides"])
        sp = bench.speed(net, x, y, ("bp", "centered"), iterations=spec["iterations"],
                         warmup=cfg["warmup"], repeats=cfg["repeats"])
        out[name] = {"fidelity": fid, "cpu_fp32": yard, "speed": sp,
                     "batch": spec["speed_batch"],
                     "image_size": spec["image_size"]}
    return out


def convs_section(cfg, device):
    """Rounding of single fp32 convolutions and transposed convolutions on CUDA against float64
    on the CPU, for vgg5's full-width layer shapes (batch 8, 32 px): strict mode as it is
    (cuDNN's heuristic choice), with cudnn.benchmark on, with cudnn.deterministic, and with
    TF32 on (PyTorch's default for convolutions), as ‖out − ref‖ / ‖ref‖."""
    from workbench.engine.equilibrate import ieee_fp32

    g = torch.Generator().manual_seed(0)
    shapes = [(3, 128, 32), (128, 256, 32), (256, 512, 16), (512, 512, 8), (512, 512, 4)]
    modes = {"strict": dict(), "strict+benchmark": dict(benchmark=True),
             "strict+deterministic": dict(deterministic=True), "tf32": dict(tf32=True)}
    out = {}
    for cin, cout, size in shapes:
        x = torch.randn(8, cin, size, size, generator=g, dtype=torch.float64)
        w = torch.randn(cout, cin, 3, 3, generator=g, dtype=torch.float64) / (cin * 9) ** 0.5
        gy = torch.randn(8, cout, size, size, generator=g, dtype=torch.float64)
        ref = torch.nn.functional.conv2d(x, w, padding=1)
        reft = torch.nn.functional.conv_transpose2d(gy, w, padding=1)
        row = {}
        for mode, opt in modes.items():
            saved = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
            torch.backends.cudnn.benchmark = opt.get("benchmark", False)
            torch.backends.cudnn.deterministic = opt.get("deterministic", False)
            try:
                ctx = contextlib.nullcontext() if opt.get("tf32") else ieee_fp32()
                with ctx:
                    xf, wf, gf = (t.float().to(device) for t in (x, w, gy))
                    if opt.get("tf32"):
                        torch.backends.cudnn.allow_tf32 = True
                    y = torch.nn.functional.conv2d(xf, wf, padding=1).double().cpu()
                    yt = torch.nn.functional.conv_transpose2d(gf, wf, padding=1).double().cpu()
            finally:
                torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved
            row[mode] = [float((y - ref).norm() / ref.norm()), float((yt - reft).norm()
                                                                     / reft.norm())]
        out[f"{cin}->{cout} @{size}"] = row
    return out


def fidelity_fused_section(cfg, device, variants=("default",)):
    """The fidelity rule and the centered speed of fast EP with ``fused=True``, per variant of
    the free phase's fp32 maps: ``default`` (TF32 off, ``Precision.free_ieee``) and ``tf32``
    (PyTorch's setting, TF32 on for cuDNN)."""
    import dataclasses
    from unittest import mock

    from workbench.engine.equilibrate import Precision

    net, x, y = bench.make_batch(cfg["model"], cfg["image_size"], cfg["in_channels"],
                                 cfg["num_classes"], cfg["fidelity_batch"], device,
                                 **cfg["overrides"])
    out = {}
    make = Precision.make

    def tf32(name, dtype, dev):
        p = make(name, dtype, dev)
        return dataclasses.replace(p, free_ieee=False) if name == "fast" else p

    for variant in variants:
        with mock.patch.object(Precision, "make", staticmethod(tf32 if variant == "tf32"
                                                               else make)):
            out[variant] = bench.fidelity(
                net, x, y, ("centered", "random", "forward"), precisions=("fast",),
                betas=cfg["betas"], iterations=cfg["iterations"], fused=True)
            big = bench.make_batch(cfg["model"], cfg["image_size"], cfg["in_channels"],
                                   cfg["num_classes"], cfg["speed_batch"], device,
                                   **cfg["overrides"])
            out[variant]["speed"] = bench.speed(*big, ["bp", "centered"], precision="fast",
                                                iterations=cfg["iterations"], warmup=1,
                                                repeats=cfg["repeats"], fused=True)
            del big
    return out


def profile_section(cfg, device, fused=False):
    net, x, y = bench.make_batch(cfg["model"], cfg["image_size"], cfg["in_channels"],
                                 cfg["num_classes"], cfg["speed_batch"], device,
                                 **cfg["overrides"])
    precisions = ("fast",) if fused else cfg["precisions"]
    return {p: bench.profile(net, x, y, "centered", precision=p, iterations=cfg["iterations"],
                             fused=fused) for p in precisions}


def tests_section(cfg, device, out_dir):
    """``pytest -m gpu`` in a subprocess (on the CPU smoke run: collection only)."""
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "tests/test_gpu.py", "-q",
           "-p", "no:cacheprovider", "-o", "addopts="]
    if device.type != "cuda":
        cmd.append("--collect-only")
    start = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    text = r.stdout + r.stderr
    if out_dir:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "gpu_tests.log").write_text(text)
    last = [line for line in text.strip().splitlines() if line.strip()][-1:] or [""]
    return {"returncode": r.returncode, "summary": last[0], "seconds": time.monotonic() - start,
            "failures": [line for line in text.splitlines()
                         if line.startswith(("FAILED", "ERROR", "E   "))][:40]}


def train_section(cfg, device, data_root, seconds):
    """Centered EP and BP, each time-boxed: a calibration run (``calibration_steps`` steps,
    one epoch, no probe) measures images/s; the real run gets the epochs — or, when not even
    one fits, the first training images — that fit in ``seconds`` at that rate, with its whole
    cosine schedule."""
    from workbench import data
    from workbench.training import train

    t = cfg["train"]
    out = {"time_box_s": seconds}
    with tempfile.TemporaryDirectory() as tmp:
        for algorithm in ("ep", "bp"):
            base = dict(dataset=t["dataset"], data_root=data_root, model=t["model"],
                        image_size=t["image_size"], model_args=t["model_args"],
                        scheme="centered" if algorithm == "ep" else "bp", beta=t["beta"],
                        iterations=t["iterations"], cost="ce", batch_size=t["batch_size"],
                        lr=t["lr"], workers=t["workers"], device=device.type,
                        progress="none", probe_every=0, download=False,
                        limit_test=t["limit_test"])
            calib = train.run({**base, "epochs": 1,
                               "limit_train": t["batch_size"] * t["calibration_steps"],
                               "run_dir": f"{tmp}/{algorithm}-calibration"})
            rate = json.loads(Path(calib["run_dir"], "metrics.jsonl").read_text()
                              .splitlines()[-1])["images_per_second"]
            n_train = len(data.build(t["dataset"], "train", data_root=data_root,
                                     image_size=t["image_size"], download=False))
            fit = rate * seconds
            epochs = max(1, math.floor(fit / n_train))
            limit = None if fit >= n_train else max(t["batch_size"],
                                                    int(fit) // t["batch_size"] * t["batch_size"])
            summary = train.run({**base, "epochs": epochs, "limit_train": limit,
                                 "run_dir": f"{tmp}/{algorithm}"})
            epochs_rows = [json.loads(line) for line in
                           Path(summary["run_dir"], "metrics.jsonl").read_text().splitlines()]
            epochs_rows = [r for r in epochs_rows if r["type"] == "epoch"]
            out[algorithm] = {
                "calibration_images_per_s": rate, "epochs": epochs,
                "train_images": summary["train_examples"],
                "test_images": summary["test_examples"],
                "test_top1_error": summary["test_top1_error"],
                "train_loss": summary["train_loss"],
                "images_per_s": sum(r["images_per_second"] for r in epochs_rows)
                / len(epochs_rows),
                "wall_s": summary["wall_time_seconds"], "per_epoch": epochs_rows}
    return out


def memory_section(cfg, device):
    out = {}
    for p in cfg["precisions"]:
        for batch in cfg["memory_batches"]:
            key = f"{p} batch {batch}"
            try:
                net, x, y = bench.make_batch(cfg["model"], cfg["image_size"], cfg["in_channels"],
                                             cfg["num_classes"], batch, device, **cfg["overrides"])
                out[key] = bench.speed(net, x, y, ["centered"], precision=p,
                                       iterations=cfg["iterations"], warmup=1,
                                       repeats=1)["centered"]
            except torch.cuda.OutOfMemoryError as e:
                out[key] = {"error": f"out of memory: {str(e).splitlines()[0]}"}
            finally:
                net = x = y = None
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    return out


# ---------------------------------------------------------------------------------------------
# the table
# ---------------------------------------------------------------------------------------------
def _row(label, values, fmt="{:.4f}"):
    return f"  {label:<28}" + " ".join(f"{'-' if v is None else fmt.format(v):>7}"
                                       for v in values)


def table(report) -> str:
    cfg = report["config"]
    lines = [f"GPU check: {cfg['model']} {cfg['image_size']}px, K={cfg['iterations']}, "
             f"{report['environment']['hardware']}, torch {report['environment']['torch']}"]
    tests = report["sections"].get("tests")
    if isinstance(tests, dict) and "error" not in tests:
        lines.append(f"\ntests (pytest -m gpu): {tests['summary']}")
        lines += [f"  {line[:150]}" for line in tests["failures"][:12]]
    fid = report["sections"].get("fidelity")
    if isinstance(fid, dict) and "betas" in fid:
        n = len(next(iter(fid["bp"].values())))
        lines.append(f"\nfidelity, batch {cfg['fidelity_batch']}: cosine with float64 "
                     f"(rule: EP_fast >= BP_fast - {bench.RULE_SLACK})")
        lines.append(_row("layer", range(1, n + 1), "{}"))
        for p, cos in fid["bp"].items():
            lines.append(_row(f"BP {p}", cos))
        for beta, rows in fid["betas"].items():
            for scheme, by_p in rows.items():
                for p, r in by_p.items():
                    verdict = "" if p != "fast" else ("  PASS" if r["pass"] else "  FAIL")
                    lines.append(_row(f"EP {scheme} b={beta} {p}", r["cosine"]) + verdict)
    ff = report["sections"].get("fidelity-fused")
    if isinstance(ff, dict) and "error" not in ff:
        for variant, res in ff.items():
            sp = res.get("speed", {}).get("centered", {})
            lines.append(f"\nfidelity-fused, free phase {variant}: cosine with float64, "
                         f"BP fast {' '.join(f'{c:.4f}' for c in res['bp']['fast'])}; centered "
                         f"batch {cfg['speed_batch']}: {sp.get('images_per_s', 0):.1f} img/s, "
                         f"{sp.get('time_vs_bp', 0):.2f}x BP")
            for beta, rows in res["betas"].items():
                for scheme, by_p in rows.items():
                    r = by_p["fast"]
                    lines.append(_row(f"EP {scheme} b={beta}", r["cosine"])
                                 + ("  PASS" if r["pass"] else "  FAIL min margin "
                                    f"{min(m for m in r['margin'] if m is not None):.4f}"))
    cv = report["sections"].get("convs")
    if isinstance(cv, dict) and "error" not in cv:
        modes = list(next(iter(cv.values())))
        lines.append("\nconvs: rel. error of one fp32 conv / transposed conv against float64, "
                     "per mode: " + ", ".join(modes))
        for shape, row in cv.items():
            lines.append(f"  {shape:<16} " + "  ".join(f"{row[m][0]:.1e}/{row[m][1]:.1e}"
                                                      for m in modes))
    for name in ("speed", "fused"):
        sp = report["sections"].get(name)
        if not isinstance(sp, dict) or "error" in sp:
            continue
        lines.append(f"\n{name}, batch {cfg['speed_batch']}:")
        lines.append(f"  {'precision':<9} {'algorithm':<9} {'ms/step':>9} {'img/s':>8} "
                     f"{'x BP':>6} {'peak GiB':>9}  target")
        for p, algs in sp.items():
            for a, r in algs.items():
                lines.append(f"  {p:<9} {a:<9} {r['ms_per_step']:>9.1f} {r['images_per_s']:>8.1f} "
                             f"{r.get('time_vs_bp', float('nan')):>6.2f} "
                             f"{_gib(r['peak_memory_mib']):>9}  {_target(a, r)}")
    mem = report["sections"].get("memory")
    if isinstance(mem, dict) and "error" not in mem:
        lines.append("\nmemory, centered EP:")
        for key, r in mem.items():
            lines.append(f"  {key:<20} " + (r["error"] if "error" in r else
                                             f"peak {_gib(r['peak_memory_mib'])} GiB, "
                                             f"{r['images_per_s']:.1f} img/s"))
    for name in ("profile", "profile-fused"):
        prof = report["sections"].get(name)
        if not isinstance(prof, dict) or "error" in prof:
            continue
        for p, r in prof.items():
            lines.append(f"\n{name}, centered EP {p}, batch {cfg['speed_batch']}: "
                         f"{r['total_ms']:.1f} ms of {r['clock']} time"
                         + (f"; step {r['wall_ms']:.1f} ms on the host clock, kernels span "
                            f"{r['span_ms']:.1f} ms, busy {r['busy_ms']:.1f} ms, idle gaps "
                            f"{r['gaps_ms']:.1f} ms, {r['kernels']} kernels"
                            if "gaps_ms" in r else ""))
            for label, c in r["categories"].items():
                lines.append(f"  {label:<24} {c['ms']:>9.2f} ms {100 * c['share']:>5.1f}%")
            lines.append("  top operators by self time:")
            for op in r["ops"]:
                lines.append(f"  {op['name'][:44]:<44} {op['calls']:>6} calls {op['ms']:>9.2f} ms "
                             f"{100 * op['share']:>5.1f}%")
    gen = report["sections"].get("general")
    if isinstance(gen, dict) and "error" not in gen:
        lines.append("\ngeneral path, strict fp32 (cosine with float64 per layer; ms per step):")
        for name, r in gen.items():
            cos = r["fidelity"]["betas"]["0.005"]["centered"]["strict"]["cosine"]
            bp = r["fidelity"]["bp"]["strict"]
            yard = r["cpu_fp32"]["betas"]["0.005"]["centered"]["strict"]["cosine"]
            sp = r["speed"]
            lines.append(f"  {name:<9} centered min cos {min(cos):.6f} (fp32 on the CPU "
                         f"{min(yard):.6f}), BP min cos {min(bp):.6f}, "
                         f"pass {r['fidelity']['pass']}; batch {r['batch']} at "
                         f"{r['image_size']} px: BP {sp['bp']['ms_per_step']:.1f} ms, centered "
                         f"{sp['centered']['ms_per_step']:.1f} ms "
                         f"({sp['centered'].get('time_vs_bp', float('nan')):.1f}x BP)")
    tr = report["sections"].get("train")
    if isinstance(tr, dict) and "error" not in tr:
        t = cfg["train"]
        lines.append(f"\ntrain, {t['model']} on {t['dataset']}, batch {t['batch_size']}, "
                     f"time box {tr['time_box_s']:.0f} s each:")
        for a in ("ep", "bp"):
            if a in tr:
                r = tr[a]
                lines.append(f"  {a:<3} {r['epochs']:>3} epochs x {r['train_images']:>6} images: "
                             f"test top-1 error {100 * r['test_top1_error']:.2f} %, "
                             f"{r['images_per_s']:.0f} img/s, {r['wall_s']:.0f} s")
    for name, sec in report["sections"].items():
        if isinstance(sec, dict) and "error" in sec:
            lines.append(f"\n{name}: {sec['error']}")
    lines.append(f"\ntotal {report['seconds']:.0f} s")
    return "\n".join(lines)


def _gib(mib):
    return "-" if mib is None else f"{mib / 1024:.2f}"


def _target(algorithm, r) -> str:
    if algorithm not in TARGETS:
        return ""
    ok = r["images_per_s"] >= TARGETS[algorithm]
    ratio = r.get("time_vs_bp")
    text = f">= {TARGETS[algorithm]:.0f} img/s {'met' if ok else 'NOT met'}"
    if ratio is not None:
        text += f"; <= {MAX_RATIO:.0f}x BP {'met' if ratio <= MAX_RATIO else 'NOT met'}"
    return text


# ---------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    args = parse(argv)
    if args.cpu_smoke:
        cfg, device = SMOKE, torch.device("cpu")
    elif not torch.cuda.is_available():
        print("gpu_check: no CUDA device is visible (torch "
              f"{torch.__version__}, built for CUDA {torch.version.cuda}); these checks need "
              "one GPU. For a CPU dry run of the same code: bench/gpu_check.sh --cpu-smoke",
              file=sys.stderr)
        return 1
    else:
        cfg, device = FULL, torch.device("cuda")
        torch.backends.cudnn.benchmark = True
    sections = list(args.sections) + (["fused"] if args.fused and "fused" not in args.sections
                                      else [])
    run = {"tests": lambda: tests_section(cfg, device, args.out),
           "train": lambda: train_section(cfg, device, args.data_root, args.train_seconds
                                          if device.type == "cuda" else 2.0),
           "fidelity": lambda: fidelity_section(cfg, device),
           "speed": lambda: speed_section(cfg, device),
           "memory": lambda: memory_section(cfg, device),
           "profile": lambda: profile_section(cfg, device),
           "fused": lambda: speed_section(cfg, device, fused=True),
           "profile-fused": lambda: profile_section(cfg, device, fused=True),
           "fidelity-fused": lambda: fidelity_fused_section(
               cfg, device, ("default", "tf32") if args.tf32_free else ("default",)),
           "convs": lambda: convs_section(cfg, device),
           "general": lambda: general_section(GENERAL_SMOKE if args.cpu_smoke else GENERAL_FULL,
                                              cfg, device)}
    t0 = time.monotonic()
    report = {"config": {k: v for k, v in cfg.items()}, "environment": bench.environment(device),
              "sections": {}}
    path = Path(args.out) / "gpu_check.json" if args.out else None

    def save():
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(report, indent=2) + "\n")

    for name in sections:
        elapsed = time.monotonic() - t0
        if elapsed > args.budget_s:
            report["sections"][name] = {"error": f"skipped: {elapsed:.0f} s > --budget-s"}
            continue
        print(f"gpu_check: {name} ...", file=sys.stderr, flush=True)
        start = time.monotonic()
        try:
            report["sections"][name] = run[name]()
        except Exception as e:  # a failing section is reported; the next one still runs
            import traceback
            report["sections"][name] = {"error": f"{type(e).__name__}: {e}",
                                        "traceback": traceback.format_exc()[-3000:]}
        took = time.monotonic() - start
        report.setdefault("section_seconds", {})[name] = round(took, 1)
        print(f"gpu_check: {name} took {took:.0f} s", file=sys.stderr, flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        report["seconds"] = time.monotonic() - t0
        save()          # after every section: a run cut short still leaves what it measured
    report["seconds"] = time.monotonic() - t0
    print(table(report))
    save()
    if path is not None:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
