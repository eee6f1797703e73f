"""Behaviour is pinned across refactors: float64 gradients of every scheme (and BP), both update
rules and both costs, on fixed mlp and vgg5 batches, against the SHA-256 of every gradient tensor
as the engine computed it at commit 73f441d (tests/data/reference_grads_73f441d.json; the weights'
hashes are kept too, so that a changed initialisation or RNG is told apart from a changed
engine)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from workbench import ep, models

REFERENCE = Path(__file__).parent / "data" / "reference_grads_73f441d.json"
# vgg5 with the fan-out convolutions of that commit (fan-in is the default now)
SPECS = {"mlp": dict(kw=dict(widths=(24, 16)), size=8, ch=1),
         "vgg5": dict(kw=dict(channels=(4, 6, 8, 8, 8), conv_fan="fan_out"), size=32, ch=1)}


def sha(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().contiguous().cpu().numpy().tobytes()).hexdigest()[:32]


@pytest.mark.parametrize("name", sorted(SPECS))
def test_gradients_are_bit_identical_to_the_reference(name):
    """Oracle: the hashes written at 73f441d. Same seeded weights (their hashes match first),
    same batch → every gradient tensor bit for bit the same (equal SHA-256), for 5 schemes × 2
    update rules × 2 costs."""
    ref = json.loads(REFERENCE.read_text())[name]
    spec = SPECS[name]
    torch.manual_seed(0)
    net = models.build(name, num_classes=5, in_channels=spec["ch"], image_size=spec["size"],
                       **spec["kw"]).to(torch.float64)
    assert {k: sha(v) for k, v in net.state_dict().items()} == ref["weights"]
    g = torch.Generator().manual_seed(1)
    x = torch.rand((6, spec["ch"], spec["size"], spec["size"]), generator=g, dtype=torch.float64)
    y = torch.randint(0, 5, (6,), generator=g)
    signs = torch.tensor([1., -1., -1., 1., 1., -1.], dtype=torch.float64)
    for key, want in ref["grads"].items():
        scheme, update, cost = key.split("/")
        got = ep.estimate(net, x, y, scheme=scheme, beta=0.05, iterations=7, cost=cost,
                          update=update, accumulate=False, precision="strict",
                          signs=signs if scheme == "random" else None).grads
        assert {k: sha(v) for k, v in got.items()} == want, key
    assert len(ref["grads"]) == 20
