"""The training configuration (:class:`TrainConfig`), its checks and its command-line flags.

Everything a run depends on is one :class:`TrainConfig`; how each gradient is estimated is its
``estimator`` (an :class:`~workbench.engine.settings.EstimatorSettings`, defaulting to the paper's VGG5
cross-entropy recipe, docs/method.md §8). ``config.json`` in a run folder is
:meth:`TrainConfig.to_dict`; :meth:`TrainConfig.from_dict` also reads the flat layout that
earlier versions wrote (the estimator's fields at the top level).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .. import data, flags
from ..engine import models
from ..engine.settings import PC_SCHEMES, SCHEMES, EstimatorSettings
from ..files import read_json
from ..flags import option
from .presets import PRESETS, preset_values
from .runfolder import CONFIG

#: the estimators a training step can take (``algorithm="ep"``; ``ipc`` takes ``il``)
TRAIN_SCHEMES = SCHEMES + PC_SCHEMES

__all__ = ["TrainConfig", "ALGORITHMS", "PROGRESS", "SCHEDULES", "RESUMABLE", "add_arguments",
           "config_from_args", "default_estimator", "saved_config"]

ALGORITHMS = ("ep", "bp", "ipc")
PROGRESS = ("auto", "text", "none")
SCHEDULES = ("epoch", "step")
#: fields that may change when a run is resumed (they do not change what is computed)
RESUMABLE = ("resume", "progress", "workers", "run_dir", "data_root", "download", "device",
             "tensorboard", "wandb")


def default_estimator() -> EstimatorSettings:
    """The paper's VGG5 cross-entropy recipe (Table 7): β = 0.02, K = 5, centered."""
    return EstimatorSettings(scheme="centered", beta=0.02, iterations=5)


@dataclass(init=False)
class TrainConfig:
    """Everything a run depends on; the field names are the CLI flags with underscores (the
    estimator's fields are flags of their own names: ``--scheme``, ``--beta``, …).

    ``TrainConfig(model="vgg5", scheme="random", beta=0.05)``: the estimator's fields may be
    given flat, beside (and over) ``estimator=EstimatorSettings(...)`` or a dict of its fields.
    ``TrainConfig(preset="vgg5-cifar10-ce", lr=0.02)``: a recipe of the paper
    (:mod:`workbench.training.presets`) fills every field not given; a ``dataset`` or ``model`` given
    beside a preset must be the preset's.
    """
    preset: Optional[str] = option(None, "a recipe of the paper: its values for every field "
                                   "not given (workbench.training.presets)", sorted(PRESETS))
    dataset: str = option("fashion-mnist", "dataset name")
    data_root: Optional[str] = option(None, "folder holding the datasets (else $WORKBENCH_DATA)")
    model: str = option("vgg5", "model name")
    image_size: Optional[int] = option(
        None, "input size (default: the dataset's own; vgg5: its registry size, 32)")
    algorithm: str = option("ep", "ep: one gradient estimate per step by --scheme (EP's, or il: "
                            "inference learning); bp: backprop; ipc: incremental PC (the weights "
                            "step after every inference step; with --scheme il)", ALGORITHMS)
    estimator: EstimatorSettings = option(default_factory=default_estimator,
                                          help="how each gradient is estimated")
    epochs: int = option(100, "epochs")
    batch_size: int = option(64, "the GLOBAL batch (split over the processes)")
    lr: float = option(0.01, "peak learning rate (cosine schedule over all steps)")
    momentum: float = option(0.9, "SGD momentum")
    nesterov: bool = option(True, "Nesterov momentum")
    weight_decay: float = option(3e-4, "weight decay on every parameter")
    min_lr: float = option(1e-6, "final learning rate")
    schedule: str = option("epoch", "cosine annealing per epoch (the paper: T_max in epochs) "
                           "or per step", SCHEDULES)
    limit_train: Optional[int] = option(None, "use only the first N training images")
    limit_test: Optional[int] = option(None, "use only the first N test images")
    checkpoint_every: int = option(0, "also checkpoint every N steps (0: each epoch only)")
    device: str = option("auto", "auto, cpu, cuda or cuda:N")
    seed: int = option(0, "seed of everything random")
    run_dir: Optional[str] = option(None, "run folder (default: runs/<name>-<time>)")
    resume: bool = option(False, "continue the run in --run-dir from its checkpoint (flags not "
                          "given are taken from its config.json; flags that differ are refused)")
    progress: str = option("auto", "auto: a bar on a terminal, text lines otherwise", PROGRESS)
    workers: int = option(0, "DataLoader worker processes")
    probe_every: int = option(100, "log EP-vs-BP gradient cosines every N steps (0: never)")
    probe_size: int = option(64, "images in the fixed probe batch")
    eval_batch_size: int = option(256, "batch size of the test pass")
    model_args: dict = option(default_factory=dict, kind="name_value",
                              help="model override NAME=VALUE (JSON value), e.g. "
                                   "widths=[256,256]; repeatable")
    data_args: dict = option(default_factory=dict, kind="name_value",
                             help="dataset option NAME=VALUE, e.g. decode=device (imagenet: "
                                  "JPEG decode on the GPU); repeatable")
    in_channels: Optional[int] = option(None, "channels of the synthetic dataset")
    num_classes: Optional[int] = option(None, "classes of the synthetic dataset")
    download: bool = option(True, "let torchvision download MNIST / Fashion-MNIST / CIFAR when "
                            "missing")
    tensorboard: bool = option(True, "also write TensorBoard event files into <run_dir>/"
                               "tensorboard (workbench.training.tracking)")
    wandb: bool = option(False, "also log to Weights & Biases in offline mode (needs the wandb "
                         "package; sync later with `wandb sync`)")

    def __init__(self, **kw):
        kw = self.migrate(kw)
        if kw.get("preset") is not None:
            kw = self.migrate({**self._preset(kw["preset"], kw), **kw})
        unknown = sorted(set(kw) - set(self.names()))
        if unknown:
            raise ValueError(f"unknown config fields {unknown}; accepted: "
                             f"{', '.join(self.names() + list(EstimatorSettings.names()))}")
        for f in dataclasses.fields(self):
            if f.name in kw:
                value = kw[f.name]
            elif f.default_factory is not dataclasses.MISSING:
                value = f.default_factory()
            else:
                value = f.default
            setattr(self, f.name, value)
        if isinstance(self.estimator, dict):
            self.estimator = default_estimator().replace(**self.estimator)

    @staticmethod
    def _preset(name: str, given: dict) -> dict:
        values = preset_values(name)
        for key in ("dataset", "model"):
            if key in given and given[key] != values[key]:
                raise ValueError(f"preset {name!r} is for {key} {values[key]!r}; got {key} "
                                 f"{given[key]!r} beside it (drop one of them, or choose "
                                 f"another preset: {', '.join(sorted(PRESETS))})")
        est = given.get("estimator")
        if est is not None:             # nested estimator fields given count as given
            est = est.to_dict() if isinstance(est, EstimatorSettings) else dict(est)
            values = {k: v for k, v in values.items() if k not in est}
        return values

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def migrate(cls, d: dict) -> dict:
        """A config dict in the current layout: the estimator's fields, where given at the top
        level (as earlier versions wrote config.json, and as a flat dict of overrides reads),
        move into ``estimator``."""
        d = dict(d)
        flat = {k: d.pop(k) for k in EstimatorSettings.names() if k in d}
        if flat:
            est = d.get("estimator")
            est = est.to_dict() if isinstance(est, EstimatorSettings) else dict(est or {})
            d["estimator"] = {**est, **flat}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        return cls(**d)

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def validate(self) -> "TrainConfig":
        """Raise ``ValueError`` naming the field, the value and what is accepted."""
        for name, ftype in flags.field_types(type(self)).items():
            if name != "estimator":
                _check_type(name, getattr(self, name), ftype)
        if not isinstance(self.estimator, EstimatorSettings):
            raise ValueError(f"estimator must be EstimatorSettings or a dict of its fields, got "
                             f"{self.estimator!r}")
        choices = {"dataset": data.available(), "model": models.available(),
                   "algorithm": ALGORITHMS, "progress": PROGRESS, "schedule": SCHEDULES}
        for name, accepted in choices.items():
            if getattr(self, name) not in accepted:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; accepted: "
                                 f"{', '.join(accepted)}")
        if self.estimator.scheme not in TRAIN_SCHEMES:
            raise ValueError(f"unknown scheme {self.estimator.scheme!r} for training; accepted: "
                             f"{', '.join(TRAIN_SCHEMES)} (backprop: --algorithm bp)")
        if self.algorithm == "ipc" and self.estimator.scheme != "il":
            raise ValueError("algorithm 'ipc' runs IL's inference steps (--iterations, "
                             "--step-size, --order, --state-optimizer): pass --scheme il beside "
                             "it")
        rules = [("epochs", self.epochs >= 1, ">= 1"),
                 ("batch_size", self.batch_size >= 1, ">= 1"),
                 ("lr", self.lr > 0 and math.isfinite(self.lr), "> 0"),
                 ("momentum", 0 <= self.momentum < 1, "in [0, 1)"),
                 ("weight_decay", self.weight_decay >= 0, ">= 0"),
                 ("min_lr", 0 <= self.min_lr <= self.lr, "in [0, lr]"),
                 ("limit_train", self.limit_train is None or self.limit_train >= 1, ">= 1"),
                 ("limit_test", self.limit_test is None or self.limit_test >= 1, ">= 1"),
                 ("image_size", self.image_size is None or self.image_size >= 1, ">= 1"),
                 ("checkpoint_every", self.checkpoint_every >= 0, ">= 0 (0: every epoch only)"),
                 ("workers", self.workers >= 0, ">= 0"),
                 ("probe_every", self.probe_every >= 0, ">= 0 (0: no probe)"),
                 ("probe_size", self.probe_size >= 1, ">= 1"),
                 ("eval_batch_size", self.eval_batch_size >= 1, ">= 1")]
        for name, ok, accepted in rules:
            if not ok:
                raise ValueError(f"{name} must be {accepted}, got {getattr(self, name)!r}")
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov needs momentum > 0 (or pass --no-nesterov)")
        if self.resume and not self.run_dir:
            raise ValueError("resume needs run_dir: the folder of the run to continue")
        if not (self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda")):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        return self


def _check_type(name: str, value, ftype: flags.FieldType) -> None:
    base, optional = ftype.base, ftype.optional
    if value is None and optional:
        return
    ok = {int: isinstance(value, int) and not isinstance(value, bool),
          float: isinstance(value, (int, float)) and not isinstance(value, bool),
          bool: isinstance(value, bool), str: isinstance(value, str),
          dict: isinstance(value, dict)}[base]
    if not ok:
        raise ValueError(f"{name} must be {'None or ' if optional else ''}{base.__name__}, got "
                         f"{value!r}")


def saved_config(saved: dict) -> dict:
    """A run folder's ``config.json`` in the current layout, for the resume check.

    Earlier versions wrote the estimator's fields at the top level, had no ``signs`` / ``tol``
    / ``fused`` / ``perturbation`` / ``step_size`` / ``schedule`` / ``preset`` (their runs:
    per-example signs, no tolerance, eager kernels, nudging, α = 1, the cosine per step, no
    preset) and ran fast mode's free phase under TF32. A strict run of theirs resumes exactly; a fast one is refused,
    because this version's fast mode computes the free phase in IEEE fp32 (BENCHMARKS.md)."""
    added = {"state_optimizer": "gd", "state_momentum": 0.9}   # estimator fields added since,
    if "estimator" in saved:                                     # at what earlier runs did
        return {**saved, "estimator": {**added, **saved["estimator"]}}
    if saved.get("precision") == "fast":
        raise ValueError("cannot resume: this run was trained in the fast precision of an "
                         "earlier version of the workbench (its free phase ran under TF32); "
                         "this version computes fast mode's free phase in IEEE fp32, so the "
                         "run cannot continue exactly. Start a new --run-dir, or resume it "
                         "with the version that wrote it (git_commit in its summary.json).")
    old = TrainConfig.migrate({**saved, "signs": "example", "tol": None, "fused": False,
                               "perturbation": "nudge", "step_size": 1.0, "schedule": "step",
                               "preset": None})
    old["estimator"] = {**added, **old["estimator"]}
    return json.loads(json.dumps(old))


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    """One flag per field (the estimator's included). Defaults are applied in
    :func:`config_from_args`, so that ``--resume`` can tell the flags given from the ones left
    out; training takes the EP schemes only (``--algorithm bp`` is backprop)."""
    flags.add_flags(p, TrainConfig(), suppress=True, choices={"dataset": data.available(),
                                                               "model": models.available(),
                                                               "scheme": TRAIN_SCHEMES})


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The flags given, over the saved config (``--resume``), else over the preset (``--preset``)
    and the defaults — TrainConfig itself fills what is not given."""
    given = flags.given(args, TrainConfig)
    saved = Path(given.get("run_dir") or "") / CONFIG
    if not (given.get("resume") and saved.is_file()):
        return TrainConfig.from_dict(given)
    base = saved_config(read_json(saved, "the run's config", "Restore it from a backup, or "
                                  "start the run again in a new --run-dir"))
    est = {**base.pop("estimator", {}), **given.pop("estimator", {})}
    return TrainConfig.from_dict({**base, **given, "estimator": est})
