"""Behaviour is pinned across refactors: float64 gradients of every scheme (and BP), both update
rules and both costs, on fixed mlp and vgg5 problems, against the gradients the engine computed
at commit 73f441d (tests/data/reference_grads.json, written by bench/reference_grads.py).

Equal to float64 rounding, not bit for bit: different CPUs' BLAS and vectorised kernels round
differently (measured on one machine by forcing other kernels — ATEN_CPU_CAPABILITY=default,
MKL_CBWR=COMPATIBLE, one thread — the largest relative difference of any tensor was 2.9e-14), so
the tolerance is 1e-12 relative per tensor; an engine change moves gradients by far more."""
from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest

from workbench.engine import ep, models

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "tests" / "data" / "reference_grads.json"
TOOL = runpy.run_path(str(ROOT / "bench" / "reference_grads.py"))
TOLERANCE = 1e-12


def _far(tensors: dict, ref: dict) -> dict:
    """Name → estimated relative difference, for the tensors further than TOLERANCE."""
    assert sorted(tensors) == sorted(ref)
    errors = {k: TOOL["sketch_error"](v, ref[k]) for k, v in tensors.items()}
    return {k: e for k, e in errors.items() if not e <= TOLERANCE}


@pytest.mark.parametrize("name", sorted(TOOL["SPECS"]))
def test_gradients_equal_the_reference_to_float64_rounding(name):
    """Oracle: the gradients computed at 73f441d. Same problem (its weights are checked first,
    so that a changed problem is told apart from a changed engine) → every gradient tensor within
    1e-12 relative of the reference, for 5 schemes × 2 update rules × 2 costs."""
    ref = json.loads(REFERENCE.read_text())[name]
    net, _, _, _ = TOOL["problem"](models, name)
    assert not _far(net.state_dict(), ref["weights"]), "the fixed problem itself changed"
    dump = TOOL["gradients"](ep, models)[name]["grads"]
    assert sorted(dump) == sorted(ref["grads"]) and len(dump) == 20
    far = {key: bad for key in dump if (bad := _far(dump[key], ref["grads"][key]))}
    assert not far, far


def test_the_tolerance_catches_a_change_of_one_part_in_a_billion():
    """Oracle: the sketch's own bound — a gradient scaled by 1 + 1e-9 (far below any real engine
    change, far above rounding) is reported between 1e-10 and 1e-8, beyond the tolerance, while
    the unscaled one stays within it."""
    ref = json.loads(REFERENCE.read_text())["mlp"]["grads"]["centered/mod_pgd/ce"]
    net, x, y, _ = TOOL["problem"](models, "mlp")
    got = ep.estimate(net, x, y, scheme="centered", beta=0.05, iterations=7, cost="ce",
                      update="mod_pgd", accumulate=False, precision="strict").grads
    for k, g in got.items():
        assert TOOL["sketch_error"](g, ref[k]) <= TOLERANCE
        assert 1e-10 < TOOL["sketch_error"](g * (1 + 1e-9), ref[k]) < 1e-8
