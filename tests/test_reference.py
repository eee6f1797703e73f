"""Behaviour is pinned across refactors: float64 gradients of every scheme (and BP), both update
rules and both costs, on fixed mlp and vgg5 batches, against a file written by the engine as it
was at commit 73f441d (tests/data/reference_grads_73f441d.pt, made with its ep.estimate)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from workbench import ep, models

REFERENCE = Path(__file__).parent / "data" / "reference_grads_73f441d.pt"
SPECS = {"mlp": dict(kw=dict(widths=(24, 16)), size=8, ch=1),
         "vgg5": dict(kw=dict(channels=(4, 6, 8, 8, 8)), size=32, ch=1)}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_gradients_are_bit_identical_to_the_reference_file(name):
    """Oracle: the saved file. Same weights, batch and signs → every gradient tensor equal bit
    for bit (torch.equal), for 5 schemes × 2 update rules × 2 costs."""
    ref = torch.load(REFERENCE, weights_only=True)[name]
    spec = SPECS[name]
    net = models.build(name, num_classes=5, in_channels=spec["ch"], image_size=spec["size"],
                       **spec["kw"]).to(torch.float64)
    net.load_state_dict(ref["state"])
    checked = 0
    for key, want in ref["grads"].items():
        scheme, update, cost = key.split("/")
        kw = dict(scheme=scheme, beta=0.05, iterations=7, cost=cost, update=update,
                  accumulate=False, precision="strict")
        if scheme == "random":
            kw["signs"] = ref["signs"]
        got = ep.estimate(net, ref["x"], ref["y"], **kw).grads
        for k in want:
            assert torch.equal(got[k], want[k]), (key, k)
            checked += 1
    assert checked == len(ref["grads"]) * len(list(net.parameters())) == 20 * 2 * len(net.layers)
