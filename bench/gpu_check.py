"""Issue 6's GPU checks in one process: fidelity, speed and memory of EP beside BP, one table.

Run it through ``bench/gpu_check.sh`` (see ``--help``). On one H100 the default plan takes about
5–8 minutes; sections that would start after ``--budget-s`` seconds are skipped with a note, and
a section that fails (e.g. out of memory) is recorded and the next one runs.

Sections (VGG10 at 224×224, 1000 classes, K = 10, synthetic data, seeded):

* ``fidelity``  batch 16; per layer, cos(EP, EP_float64 of the same estimator) for β ∈ {0.05,
  0.005, 0.0005} in fast and strict precision, beside cos(BP, BP_float64) in the same precision;
  the rule cos(EP_fast, EP_f64) ≥ cos(BP_bf16, BP_f64) − 0.002 per layer.
* ``speed``     batch 128; bp and the four schemes, strict and fast; images/s, EP/BP time, and
  the targets (centered ≥ 600 img/s, one-phase schemes ≥ 1,100 img/s, EP/BP ≤ 12×).
* ``memory``    centered EP at batch 64, 128, 256: peak memory (fits in 80 GB?).
* ``profile``   where one centered step's device time goes (fast and strict, batch 128): the
  top operators by self time, for closing whatever gap the speed section shows.
* ``fused``     (only with ``--fused``) the speed section's fast runs with ``fused=True``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from workbench import bench

FULL = dict(model="vgg10", image_size=224, in_channels=3, num_classes=1000, overrides={},
            iterations=10, betas=(0.05, 0.005, 0.0005), fidelity_batch=16,
            fidelity_schemes=("centered", "random"), speed_batch=128,
            algorithms=("bp", "forward", "backward", "centered", "random"),
            precisions=("strict", "fast"), memory_batches=(64, 128, 256), warmup=2, repeats=3)
SMOKE = {**FULL, "image_size": 32, "num_classes": 10, "iterations": 6,
         "overrides": dict(channels=(4, 4, 6, 6, 8, 8, 8, 8), dense=16), "fidelity_batch": 4,
         "speed_batch": 4, "memory_batches": (2, 4), "warmup": 1, "repeats": 1}
TARGETS = {"centered": 600.0, "forward": 1100.0, "backward": 1100.0, "random": 1100.0}
MAX_RATIO = 12.0
SECTIONS = ("fidelity", "speed", "memory", "profile", "fused")


def parse(argv):
    p = argparse.ArgumentParser(
        prog="bench/gpu_check.sh", description=__doc__.split("\n\n")[0],
        epilog="Writes gpu_check.json to --out (default: $OUT when set). Needs CUDA unless "
               "--cpu-smoke; exits 1 with a message when no GPU is visible.")
    p.add_argument("--cpu-smoke", action="store_true",
                   help="tiny CPU dry run of every section (seconds; what CI runs)")
    p.add_argument("--sections", nargs="+", default=["speed", "fidelity", "memory", "profile"],
                   choices=SECTIONS, help="run in this order (default: speed fidelity memory "
                   "profile; speed first because it is the cheapest)")
    p.add_argument("--fused", action="store_true", help="also run the 'fused' section")
    p.add_argument("--budget-s", type=float, default=450.0,
                   help="skip sections that would start later than this (default 450)")
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


def profile_section(cfg, device):
    net, x, y = bench.make_batch(cfg["model"], cfg["image_size"], cfg["in_channels"],
                                 cfg["num_classes"], cfg["speed_batch"], device,
                                 **cfg["overrides"])
    return {p: bench.profile(net, x, y, "centered", precision=p, iterations=cfg["iterations"])
            for p in cfg["precisions"]}


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
    lines = [f"issue 6 GPU check: {cfg['model']} {cfg['image_size']}px, K={cfg['iterations']}, "
             f"{report['environment']['hardware']}, torch {report['environment']['torch']}"]
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
    prof = report["sections"].get("profile")
    if isinstance(prof, dict) and "error" not in prof:
        for p, r in prof.items():
            lines.append(f"\nprofile, centered EP {p}, batch {cfg['speed_batch']}: "
                         f"{r['total_ms']:.1f} ms of {r['clock']} time by operator")
            for op in r["ops"]:
                lines.append(f"  {op['name'][:44]:<44} {op['calls']:>6} calls {op['ms']:>9.2f} ms "
                             f"{100 * op['share']:>5.1f}%")
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
    run = {"fidelity": lambda: fidelity_section(cfg, device),
           "speed": lambda: speed_section(cfg, device),
           "memory": lambda: memory_section(cfg, device),
           "profile": lambda: profile_section(cfg, device),
           "fused": lambda: speed_section(cfg, device, fused=True)}
    t0 = time.monotonic()
    report = {"config": {k: v for k, v in cfg.items()}, "environment": bench.environment(device),
              "sections": {}}
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
            report["sections"][name] = {"error": f"{type(e).__name__}: {e}"}
        print(f"gpu_check: {name} took {time.monotonic() - start:.0f} s", file=sys.stderr)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    report["seconds"] = time.monotonic() - t0
    print(table(report))
    if args.out:
        path = Path(args.out) / "gpu_check.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
