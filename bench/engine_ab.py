"""A/B the EP engine against an older revision of itself, beside BP, in one process.

    .venv/bin/python bench/engine_ab.py --rev d490ca0 --batch-size 64 --repeats 3

Loads the engine's ``equilibrate.py`` and ``ep.py`` as they were at ``--rev`` (``git show``; in
``workbench/engine/``, or in ``workbench/`` for a revision before the engine had its package) next
to the current ones, then times BP, current EP and old EP round-robin on one
batch (vgg5, 32×32, centered, K = 10, ``trace=False``), with both wall time and process CPU time
(the latter is steadier on a shared machine). Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import torch

from workbench import bench
from workbench.engine import ep, models

ROOT = Path(__file__).resolve().parents[1]


def load_old(rev: str):
    """The ``ep`` module of revision ``rev``, importing that revision's ``equilibrate``."""
    def source(name):
        for path in (f"workbench/engine/{name}.py", f"workbench/{name}.py"):
            got = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=ROOT, capture_output=True,
                                 text=True)
            if got.returncode == 0:
                return path, got.stdout
        raise SystemExit(f"engine_ab: {rev} has no {name}.py in workbench/engine/ or workbench/")
    modules = {}
    for name in ("equilibrate", "ep"):
        full = f"workbench.engine._ab_{name}"
        mod = types.ModuleType(full)
        mod.__package__ = "workbench.engine"      # its siblings' relative imports resolve here
        sys.modules[full] = mod
        path, code = source(name)
        code = code.replace("from .equilibrate import", "from ._ab_equilibrate import")
        exec(compile(code, f"{rev}:{path}", "exec"), mod.__dict__)
        modules[name] = mod
    return modules["ep"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rev", required=True, help="git revision of the engine to compare with")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--in-channels", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    old = load_old(args.rev)
    torch.manual_seed(0)
    net = models.build("vgg5", num_classes=10, in_channels=args.in_channels, image_size=32)
    x = torch.rand(args.batch_size, args.in_channels, 32, 32)
    y = torch.randint(0, 10, (args.batch_size,))
    kw = dict(scheme="centered", beta=0.05, iterations=10, trace=False, accumulate=False)
    steps = {"bp": lambda: ep.estimate(net, x, y, scheme="bp", accumulate=False),
             "ep": lambda: ep.estimate(net, x, y, **kw),
             f"ep@{args.rev}": lambda: old.estimate(net, x, y, **kw)}
    for fn in steps.values():
        fn()
    wall, cpu = ({k: [] for k in steps} for _ in range(2))
    for _ in range(args.repeats):
        for k, fn in steps.items():
            t, c = time.perf_counter(), time.process_time()
            fn()
            wall[k].append((time.perf_counter() - t) * 1e3)
            cpu[k].append((time.process_time() - c) * 1e3)
    out = {"batch_size": args.batch_size, "in_channels": args.in_channels,
           "repeats": args.repeats, **bench.environment(x.device)}
    for name, times in (("wall", wall), ("cpu", cpu)):
        med = {k: statistics.median(v) for k, v in times.items()}
        out[name] = {k: {"ms_per_step": m, "time_vs_bp": m / med["bp"]} for k, m in med.items()}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
