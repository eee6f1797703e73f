"""``workbench gradcheck``: per-layer cosine and relative error of an EP estimate against BP.

Runs on one seeded batch of synthetic inputs (uniform [0, 1) pixels, random labels), so it needs
no dataset: it checks the estimator, not a training run.
"""
from __future__ import annotations

import argparse
import json

import torch

from . import ep, models
from .energy import COSTS
from .settings import ORDERS, PRECISIONS, UPDATES

DEFAULT_SIZES = {"mlp": 28, "vgg5": 32, "vgg10": 32}
DTYPES = {"float64": torch.float64, "float32": torch.float32}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="mlp", choices=models.available())
    p.add_argument("--scheme", default="centered", choices=ep.SCHEMES)
    p.add_argument("--beta", type=float, default=0.05)
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--cost", default="ce", choices=COSTS)
    p.add_argument("--update", default="mod_pgd", choices=UPDATES)
    p.add_argument("--order", default="async", choices=ORDERS)
    p.add_argument("--precision", default="strict", choices=PRECISIONS)
    p.add_argument("--dtype", default="float64", choices=sorted(DTYPES))
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--image-size", type=int, default=None,
                   help="default: 28 for mlp, 32 for vgg5 and vgg10")
    p.add_argument("--in-channels", type=int, default=1)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def run(args) -> dict:
    torch.manual_seed(args.seed)
    size = args.image_size or DEFAULT_SIZES.get(args.model, 32)
    net = models.build(args.model, num_classes=args.num_classes, in_channels=args.in_channels,
                       image_size=size).to(args.device, DTYPES[args.dtype])
    gen = torch.Generator().manual_seed(args.seed)
    x = torch.rand((args.batch_size, args.in_channels, size, size), generator=gen)
    y = torch.randint(0, args.num_classes, (args.batch_size,), generator=gen)
    x, y = x.to(args.device, DTYPES[args.dtype]), y.to(args.device)
    ref = ep.estimate(net, x, y, scheme="bp", cost=args.cost, accumulate=False)
    est = ep.estimate(net, x, y, scheme=args.scheme, beta=args.beta, iterations=args.iterations,
                      cost=args.cost, update=args.update, order=args.order,
                      precision=args.precision, accumulate=False, generator=gen)
    layers = ep.compare(net, est.grads, ref.grads)
    return {"model": args.model, "scheme": args.scheme, "beta": args.beta,
            "iterations": args.iterations, "cost": args.cost, "update": args.update,
            "order": args.order, "precision": args.precision, "dtype": args.dtype,
            "batch_size": args.batch_size, "image_size": size, "seed": args.seed,
            "final_energy": [ph.final_energy for ph in est.trace.phases], "layers": layers}


def main(args) -> int:
    out = run(args)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"{out['model']} {out['scheme']} beta={out['beta']} K={out['iterations']} "
          f"cost={out['cost']} {out['update']}/{out['order']} {out['dtype']} "
          f"batch={out['batch_size']}x{out['image_size']}px")
    print(f"{'layer':>5} {'kind':>5} {'cosine':>10} {'rel_error':>10}")
    for r in out["layers"]:
        print(f"{r['layer']:>5} {r['kind']:>5} {r['cosine']:>10.6f} {r['rel_error']:>10.3e}")
    return 0
