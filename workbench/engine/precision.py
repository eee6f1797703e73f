"""The arithmetic of one run: which dtypes the engine computes in, and whether fp32 may round
to TF32 (docs/method.md §7).

``strict`` is the reference: everything in the parameters' dtype with TF32 off. ``fast`` is the
GPU mode: bf16 tensor-core convolutions on fp32 deviations, as faithful as bf16 backprop
(BENCHMARKS.md). ``auto`` picks fast for a float32 model on CUDA, strict everywhere else.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from .settings import PRECISIONS, resolve_precision

__all__ = ["PRECISIONS", "Precision", "precision_context", "ieee_fp32", "fp32_math",
           "fp32_switches", "forward"]


@dataclass(frozen=True)
class Precision:
    """Dtypes of one run.

    ``strict``: everything in the parameters' dtype, with TF32 (and oneDNN's reduced fp32
    modes) switched off for the duration (see :func:`precision_context`). ``fast``: the nudged
    phases' conv maps in bfloat16 (channels_last on CUDA); the free phase (one forward pass, the
    O(1) states every deviation is measured from) in IEEE float32 (TF32 off: with TF32 the
    fidelity rule failed on an H200, BENCHMARKS.md); dense maps, pooling, ReLU, errors and
    states in float32. ``auto``: fast for a float32 model on CUDA, else strict.

    ``conv`` / ``dense``: compute dtypes of the nudged phases' maps; ``free``: of the free
    phase's maps; ``state``: states, deviations and errors. ``free_ieee``: run the free phase's
    fp32 maps with TF32 off (as strict mode does) even in fast mode.
    """
    name: str
    state: torch.dtype
    conv: torch.dtype
    dense: torch.dtype
    free: torch.dtype
    channels_last: bool = False
    free_ieee: bool = False     # fast: the free phase's fp32 maps with TF32 off

    @staticmethod
    def make(name: str, param_dtype: torch.dtype, device: torch.device,
             linear: bool = True) -> "Precision":
        """The dtypes of precision ``name`` (``auto`` decided by
        :func:`workbench.engine.settings.resolve_precision`)."""
        name = resolve_precision(name, param_dtype, device, linear)
        if name == "strict":
            return Precision("strict", param_dtype, param_dtype, param_dtype, param_dtype)
        return Precision("fast", torch.float32, torch.bfloat16, torch.float32, torch.float32,
                         channels_last=device.type == "cuda", free_ieee=True)


# the switches that let fp32 convs / matmuls round to TF32 (or bf16 on oneDNN): torch >= 2.9
# names them backend.op.fp32_precision; older versions only have the two CUDA allow_tf32 flags
_FP32_SWITCHES = ("cuda.matmul", "cudnn.conv", "cudnn.rnn", "mkldnn.matmul", "mkldnn.conv")


def fp32_switches() -> dict:
    """The torch backend modules that have an ``fp32_precision`` switch (torch >= 2.9), by name."""
    out = {}
    for name in _FP32_SWITCHES:
        module = torch.backends
        for part in name.split("."):
            module = getattr(module, part, None)
        if module is not None and hasattr(module, "fp32_precision"):
            out[name] = module
    return out


def fp32_math() -> dict:
    """How fp32 convs and matmuls may round now: switch name → ``ieee`` | ``tf32`` | …

    With torch < 2.9 the two legacy CUDA flags are reported as ``tf32`` / ``ieee``.
    """
    switches = fp32_switches()
    if switches:
        return {name: m.fp32_precision for name, m in switches.items()}
    return {"cuda.matmul": "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee",
            "cudnn.conv": "tf32" if torch.backends.cudnn.allow_tf32 else "ieee"}


@contextlib.contextmanager
def precision_context(precision: Precision):
    """In strict mode fp32 convs and matmuls round as IEEE fp32 (no TF32, on CUDA and oneDNN)
    for the duration; the previous settings are restored on exit. Fast mode changes nothing."""
    if precision.name != "strict":
        yield
        return
    with ieee_fp32():
        yield


@contextlib.contextmanager
def ieee_fp32():
    """fp32 convs and matmuls round as IEEE fp32 (no TF32, on CUDA and oneDNN) for the
    duration; the previous settings are restored on exit."""
    switches = fp32_switches()
    if switches:
        # the matmul precision level first (it also sets the matmul switch, so a level the
        # user chose, e.g. "high", cannot disagree with it), then every switch; torch refuses
        # to report a level when the user set the per-operator switches differently
        try:
            saved_level = torch.get_float32_matmul_precision()
        except RuntimeError:
            saved_level = None
        saved = {name: m.fp32_precision for name, m in switches.items()}
        if saved_level is not None:
            torch.set_float32_matmul_precision("highest")
        for m in switches.values():
            m.fp32_precision = "ieee"
        try:
            yield
        finally:
            if saved_level is not None:
                torch.set_float32_matmul_precision(saved_level)
            for name, m in switches.items():
                m.fp32_precision = saved[name]
        return
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def forward(net, x: torch.Tensor, precision: Precision) -> torch.Tensor:
    """The network's output ``net(x)`` in ``precision``'s arithmetic, as backprop computes it —
    strict: in the parameters' dtype; fast: under bfloat16 autocast on ``x``'s device (images
    channels_last where the precision says), the output widened to float32. The one forward
    pass of BP (:func:`workbench.engine.ep.bp_gradients`), of evaluation and of the
    benchmarks' floor; the caller holds :func:`precision_context` and the grad mode."""
    if precision.name != "fast":
        return net(x)
    with torch.autocast(x.device.type, dtype=torch.bfloat16):
        if precision.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        out = net(x)
    return out.float()
