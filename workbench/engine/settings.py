"""The settings of one gradient estimate, in one frozen dataclass that checks itself.

:class:`EstimatorSettings` is what :func:`workbench.engine.ep.estimate` computes with, what a training
config holds (``TrainConfig.estimator``), and what every command line builds its flags from
(:mod:`workbench.flags`): one list of choices and one help text per field, kept here. The
method behind each field is in docs/method.md.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional

import torch

from ..flags import option
from .energy import COSTS

SCHEMES = ("forward", "backward", "centered", "random")
#: predictive coding's own training: inference learning (docs/method.md §10)
PC_SCHEMES = ("il",)
ALL_SCHEMES = SCHEMES + PC_SCHEMES + ("bp",)
SIGN_MODES = ("example", "batch")
UPDATES = ("mod_pgd", "pgd")
ORDERS = ("async", "sync")
PRECISIONS = ("auto", "strict", "fast")
PERTURBATIONS = ("nudge", "clamp")
STATE_OPTIMIZERS = ("gd", "momentum", "adam")
#: the fields whose value means "decide for the device": a run decides them once when it starts
#: (:meth:`EstimatorSettings.resolved`) and config.json records what they became
AUTO = {"precision": "auto", "fused": None}

__all__ = ["EstimatorSettings", "SCHEMES", "PC_SCHEMES", "ALL_SCHEMES", "SIGN_MODES", "UPDATES",
           "ORDERS", "PRECISIONS", "PERTURBATIONS", "STATE_OPTIMIZERS", "check_choice",
           "check_beta", "check_iterations", "AUTO", "is_auto", "resolve_precision"]


def is_auto(name: str, value) -> bool:
    """Is ``value`` of field ``name`` the one that leaves the choice to the device (:data:`AUTO`)?"""
    return name in AUTO and value == AUTO[name]


def resolve_precision(name: str, param_dtype: torch.dtype, device, linear: bool = True) -> str:
    """``auto`` → ``fast`` for a float32 model of built-in (``linear``) layers on CUDA (where
    fast mode passed the fidelity rule, BENCHMARKS.md), ``strict`` everywhere else (general
    blocks included: docs/method.md §9); other names unchanged."""
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision {name!r}; accepted: {', '.join(PRECISIONS)}")
    if name != "auto":
        return name
    cuda = torch.device(device).type == "cuda"
    return "fast" if cuda and linear and param_dtype == torch.float32 else "strict"


def check_choice(what: str, value, accepted) -> None:
    if value not in accepted:
        raise ValueError(f"unknown {what} {value!r}; accepted: {', '.join(map(str, accepted))}")


def check_beta(beta) -> None:
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta):
        raise ValueError(f"beta must be a finite positive number, got {beta!r}")
    if beta <= 0:
        raise ValueError(f"beta must be > 0 (the scheme sets the sign: 'backward' nudges "
                         f"with -beta), got {beta!r}")


def check_iterations(iterations) -> None:
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be an integer >= 1, got {iterations!r}")


@dataclass(frozen=True)
class EstimatorSettings:
    """How one gradient estimate is computed (docs/method.md §3–§5).

    ``beta`` is the magnitude β > 0; the scheme sets the sign. ``signs``: how the ``random``
    scheme draws the sign of β (a tensor of ±1 chosen by the caller is passed to
    :func:`~workbench.engine.ep.estimate` directly). ``tol``: stop a phase early once no state changed
    by more than ``tol`` in an iteration. ``precision``: ``strict`` (the parameters' dtype,
    TF32 off), ``fast`` (bf16 convolutions on fp32 deviations) or ``auto`` (fast for a float32
    model on CUDA, else strict). ``fused``: compile the elementwise work (``None``: on where
    ``precision`` resolves to fast on CUDA). ``perturbation``: ``nudge`` (β·C in the energy)
    or ``clamp`` (the output held at ``(1 − β) h⁰_L + β·onehot(y)``, β signed by the scheme;
    ``cost`` then enters only the reported loss). ``step_size``: α of the projected gradient
    descent (docs/method.md §2; α = 1 gives the closed-form updates).

    ``scheme="il"`` is predictive coding's inference learning (docs/method.md §10): the output
    clamped to the target (``cost`` ``mse``: to onehot(y); ``ce``: the output's energy term is
    the cross-entropy of its prediction), ``iterations`` steps of projected gradient descent on
    E with step ``step_size`` in the given ``order``, the gradient ∂E/∂θ at the relaxed state
    (no 1/β); ``beta``, ``perturbation`` and ``update`` do not apply to it. ``state_optimizer``:
    how IL's steps use the gradient of E with respect to the states — ``gd`` (plain), ``momentum``
    (heavy ball, ``state_momentum``) or ``adam`` (β₁ = ``state_momentum``, β₂ = 0.999, ε = 1e-8).
    """
    scheme: str = option("centered", "EP estimator (bp: the backprop reference)", ALL_SCHEMES)
    beta: float = option(0.05, "nudging strength β > 0 (the scheme sets its sign)")
    iterations: int = option(10, "iterations K of each nudged phase")
    cost: str = option("ce", "cost of the output: cross-entropy or squared error", COSTS)
    update: str = option("mod_pgd", "nudged-phase update rule", UPDATES)
    order: str = option("async", "even/odd layers in turn, or all at once", ORDERS)
    signs: str = option("example", "random scheme: a sign of β per example or per batch",
                    SIGN_MODES)
    tol: Optional[float] = option(None, "stop a phase once no state changes by more than this")
    precision: str = option("auto", "strict (fp32, TF32 off), fast (bf16 convs) or auto (fast on "
                        "CUDA, else strict)", PRECISIONS)
    fused: Optional[bool] = option(None, "compile the elementwise work with torch.compile "
                               "(default: on with fast precision on CUDA)")
    perturbation: str = option("nudge", "nudge the output with β·C (Eq. 4), or clamp it to "
                           "(1 − β) h⁰ + β·onehot(y) (Eq. 8; no cost function)", PERTURBATIONS)
    step_size: float = option(1.0, "step size α of the nudged phase's projected gradient descent "
                          "(1: the closed forms)")
    state_optimizer: str = option("gd", "il: the optimizer of the states (plain gradient descent, "
                                  "momentum or Adam)", STATE_OPTIMIZERS)
    state_momentum: float = option(0.9, "il: momentum of the state optimizer (Adam: its β₁)")

    def __post_init__(self):
        check_choice("scheme", self.scheme, ALL_SCHEMES)
        check_choice("cost", self.cost, COSTS)
        check_choice("update rule", self.update, UPDATES)
        check_choice("order", self.order, ORDERS)
        check_choice("sign mode", self.signs, SIGN_MODES)
        check_choice("precision", self.precision, PRECISIONS)
        check_choice("perturbation", self.perturbation, PERTURBATIONS)
        check_choice("state optimizer", self.state_optimizer, STATE_OPTIMIZERS)
        if isinstance(self.state_momentum, bool) or not isinstance(self.state_momentum,
                                                                    (int, float)) \
                or not 0 <= self.state_momentum < 1:
            raise ValueError(f"state_momentum must be a number in [0, 1), got "
                             f"{self.state_momentum!r}")
        if self.state_optimizer != "gd" and self.scheme not in PC_SCHEMES:
            raise ValueError(f"state_optimizer={self.state_optimizer!r} is for scheme 'il' (its "
                             f"inference steps); EP's nudged phase moves by its update rule "
                             f"(update=mod_pgd|pgd, step_size)")
        if isinstance(self.step_size, bool) or not isinstance(self.step_size, (int, float)) \
                or not math.isfinite(self.step_size) or self.step_size <= 0:
            raise ValueError(f"step_size must be a finite number > 0 (1: the closed-form "
                             f"updates), got {self.step_size!r}")
        if self.scheme != "bp":
            check_beta(self.beta)
            check_iterations(self.iterations)
        if self.tol is not None and (isinstance(self.tol, bool)
                                     or not isinstance(self.tol, (int, float))
                                     or not self.tol >= 0):
            raise ValueError(f"tol must be None or a number >= 0, got {self.tol!r}")
        if self.fused is not None and not isinstance(self.fused, bool):
            raise ValueError(f"fused must be None (auto), True or False, got {self.fused!r}")

    def replace(self, **changes) -> "EstimatorSettings":
        """A copy with ``changes`` (checked); unknown names are refused with the accepted ones."""
        unknown = sorted(set(changes) - set(self.names()))
        if unknown:
            raise ValueError(f"unknown estimator settings {unknown}; accepted: "
                             f"{', '.join(self.names())}")
        return dataclasses.replace(self, **changes)

    def resolved(self, param_dtype: torch.dtype, device, linear: bool = True) -> "EstimatorSettings":
        """These settings with every automatic choice (:data:`AUTO`) decided for a model of
        ``param_dtype`` on ``device`` (``linear``: of built-in layers only) — the one place the
        rule lives: precision by :func:`resolve_precision`, ``fused`` (the compiled
        elementwise kernels) on where precision is fast on CUDA."""
        precision = resolve_precision(self.precision, param_dtype, device, linear)
        fused = self.fused if self.fused is not None else \
            (precision == "fast" and torch.device(device).type == "cuda")
        return dataclasses.replace(self, precision=precision, fused=fused)

    def as_recorded(self, recorded: dict) -> dict:
        """:meth:`to_dict`, with each automatic choice replaced by what ``recorded`` (the
        estimator of a run's config.json) says it resolved to: how a run folder records these
        settings."""
        d = self.to_dict()
        for name in AUTO:
            if is_auto(name, d[name]) and name in recorded:
                d[name] = recorded[name]
        return d

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "EstimatorSettings":
        return cls().replace(**d)
