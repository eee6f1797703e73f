"""``workbench gradcheck``: per-layer cosine and relative error of an EP estimate against BP.

Runs on one seeded batch of synthetic inputs (:func:`workbench.seeded.batch`), so it
needs no dataset: it checks the estimator, not a training run.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from typing import Optional

import torch

from . import flags
from .seeded import batch
from .engine import ep, models
from .engine.settings import EstimatorSettings
from .flags import option

DTYPES = {"float64": torch.float64, "float32": torch.float32}


@dataclass(frozen=True)
class GradcheckOptions:
    """What ``workbench gradcheck`` runs on (the estimator: :class:`EstimatorSettings`)."""
    model: str = option("mlp", "model name")
    dtype: str = option("float64", "the model's dtype", sorted(DTYPES))
    batch_size: int = option(16, "images in the batch")
    image_size: Optional[int] = option(None, "input size (default: the model's registry size)")
    in_channels: int = option(1, "input channels")
    num_classes: int = option(10, "classes")
    device: str = option("cpu", "cpu or cuda")
    seed: int = option(0, "seed of the model, the batch and the random scheme's signs")
    json: bool = option(False, "print one JSON object instead of a table")
    model_args: dict = option(default_factory=dict, kind="name_value",
                              help="model override NAME=VALUE (JSON value), e.g. "
                                   "channels=[4,4,6,6,8,8,8,8]; repeatable")
    estimator: EstimatorSettings = option(default_factory=EstimatorSettings,
                                          help="the estimate")


def add_arguments(p: argparse.ArgumentParser) -> None:
    flags.add_flags(p, GradcheckOptions(), choices={"model": models.available()})


def options_from_args(args) -> GradcheckOptions:
    given = flags.given(args, GradcheckOptions)
    est = EstimatorSettings().replace(**given.pop("estimator", {}))
    return dataclasses.replace(GradcheckOptions(), **given, estimator=est)


def run(args) -> dict:
    o = args if isinstance(args, GradcheckOptions) else options_from_args(args)
    s = o.estimator
    size = o.image_size or models.default_image_size(o.model)
    net, x, y = batch(o.model, o.batch_size, num_classes=o.num_classes,
                      in_channels=o.in_channels, image_size=size, seed=o.seed,
                      device=o.device, dtype=DTYPES[o.dtype], **o.model_args)
    gen = torch.Generator().manual_seed(o.seed)
    ref = ep.estimate(net, x, y, s, scheme="bp", accumulate=False)
    est = ep.estimate(net, x, y, s, accumulate=False, generator=gen)
    layers = ep.compare(net, est.grads, ref.grads)
    return {"model": o.model, **s.to_dict(), "dtype": o.dtype, "batch_size": o.batch_size,
            "image_size": size, "seed": o.seed, "model_args": dict(o.model_args),
            "parameters": sum(p.numel() for p in net.parameters()),
            "final_energy": [ph.final_energy for ph in est.trace.phases], "layers": layers}


def main(args) -> int:
    out = run(args)
    if out.pop("json", None) or getattr(args, "json", False):
        print(json.dumps(out, indent=2))
        return 0
    print(f"{out['model']} {out['scheme']} beta={out['beta']} K={out['iterations']} "
          f"cost={out['cost']} {out['update']}/{out['order']} {out['dtype']} "
          f"batch={out['batch_size']}x{out['image_size']}px")
    print(f"parameters: {out['parameters']:,}")
    print(f"{'layer':>5} {'kind':>5} {'cosine':>10} {'rel_error':>10}")
    for r in out["layers"]:
        print(f"{r['layer']:>5} {r['kind']:>5} {r['cosine']:>10.6f} {r['rel_error']:>10.3e}")
    return 0
