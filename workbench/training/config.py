"""What a run computes (:class:`TrainConfig`), how this process runs it (:class:`RunOptions`),
their checks, their command-line flags, and the one reader of a saved ``config.json``.

Everything the numbers of a run depend on is one :class:`TrainConfig`, checked when it is
built; how each gradient is estimated is its ``estimator`` (an
:class:`~workbench.engine.settings.EstimatorSettings`, defaulting to the paper's VGG5
cross-entropy recipe, docs/method.md §8). Where the run folder is, the device, the progress
display, the loader workers, where the data lives and the trackers are :class:`RunOptions`:
they may change when a run is resumed, and a resume compares the :class:`TrainConfig` only.

``config.json`` in a run folder is :func:`record`: the config's fields, with the run options
under ``"run"``. :func:`upgrade` brings any config.json an earlier version wrote to this layout;
every reader goes through it (:func:`saved_parts`).
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
from ..flags import option
from .presets import PRESETS, preset_values
from .runfolder import RunFolder

#: the gradients a training step can take: EP's schemes, IL (``incremental``: iPC) and
#: backprop (``bp``, the same name as :func:`workbench.engine.ep.estimate`'s)
TRAIN_SCHEMES = SCHEMES + PC_SCHEMES + ("bp",)

__all__ = ["TrainConfig", "RunOptions", "PROGRESS", "SCHEDULES", "add_arguments",
           "config_from_args", "default_estimator", "split", "as_run", "record", "upgrade",
           "saved_parts", "resumable", "RENAMED"]

PROGRESS = ("auto", "text", "none")
SCHEDULES = ("epoch", "step")
#: the key of the run options in config.json
RUN = "run"
#: fields of earlier versions, and what replaced them (config.json: :func:`upgrade`)
RENAMED = {"algorithm": "there is no field 'algorithm' any more: backprop is scheme 'bp' "
                        "(--scheme bp), iPC is incremental with scheme 'il' (--scheme il "
                        "--incremental), EP is its scheme alone"}


def default_estimator() -> EstimatorSettings:
    """The paper's VGG5 cross-entropy recipe (Table 7): β = 0.02, K = 5, centered."""
    return EstimatorSettings(scheme="centered", beta=0.02, iterations=5)


@dataclass
class RunOptions:
    """How this process runs a training (not what it computes): they may change when a run is
    resumed. The field names are the CLI flags with underscores."""
    run_dir: Optional[str] = option(None, "run folder (default: runs/<name>-<time>)")
    resume: bool = option(False, "continue the run in --run-dir from its checkpoint (flags not "
                          "given are taken from its config.json; flags that differ are refused)")
    device: str = option("auto", "auto, cpu, cuda or cuda:N")
    progress: str = option("auto", "auto: a bar on a terminal, text lines otherwise", PROGRESS)
    workers: int = option(0, "DataLoader worker processes")
    data_root: Optional[str] = option(None, "folder holding the datasets (else $WORKBENCH_DATA)")
    download: bool = option(True, "let torchvision download MNIST / Fashion-MNIST / CIFAR when "
                            "missing")
    tensorboard: bool = option(True, "also write TensorBoard event files into <run_dir>/"
                               "tensorboard (workbench.training.tracking)")
    wandb: bool = option(False, "also log to Weights & Biases in offline mode (needs the wandb "
                         "package; sync later with `wandb sync`)")

    def __post_init__(self):
        _check_types(self)
        if self.progress not in PROGRESS:
            raise ValueError(f"unknown progress {self.progress!r}; accepted: "
                             f"{', '.join(PROGRESS)}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers!r}")
        if self.resume and not self.run_dir:
            raise ValueError("resume needs run_dir: the folder of the run to continue")
        if not (self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda")):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "RunOptions":
        return dataclasses.replace(self, **changes)


@dataclass(init=False)
class TrainConfig:
    """Everything the numbers of a run depend on, checked when it is built (``ValueError``
    naming the field, the value and what is accepted); the field names are the CLI flags with
    underscores (the estimator's fields are flags of their own names: ``--scheme``, ``--beta``,
    …). How this process runs it is :class:`RunOptions`.

    ``TrainConfig(model="vgg5", scheme="random", beta=0.05)``: the estimator's fields may be
    given flat, beside (and over) ``estimator=EstimatorSettings(...)`` or a dict of its fields.
    ``TrainConfig(preset="vgg5-cifar10-ce", lr=0.02)``: a recipe of the paper
    (:mod:`workbench.training.presets`) fills every field not given; a ``dataset`` or ``model`` given
    beside a preset must be the preset's. ``scheme="bp"`` trains with backprop;
    ``incremental=True`` (with ``scheme="il"``) is iPC.
    """
    preset: Optional[str] = option(None, "a recipe of the paper: its values for every field "
                                   "not given (workbench.training.presets)", sorted(PRESETS))
    dataset: str = option("fashion-mnist", "dataset name")
    model: str = option("vgg5", "model name")
    image_size: Optional[int] = option(
        None, "input size (default: the dataset's own; vgg5: its registry size, 32)")
    estimator: EstimatorSettings = option(default_factory=default_estimator,
                                          help="how each gradient is estimated (--scheme bp: "
                                               "backprop)")
    incremental: bool = option(False, "incremental PC (iPC, with --scheme il): the weights step "
                               "after every inference step")
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
    seed: int = option(0, "seed of everything random")
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

    def __init__(self, **kw):
        kw = self.migrate(kw)
        if kw.get("preset") is not None:
            kw = self.migrate({**self._preset(kw["preset"], kw), **kw})
        unknown = sorted(set(kw) - set(self.names()))
        options = [k for k in unknown if k in RunOptions.names()]
        if options:
            raise ValueError(f"{options} are run options (how this process runs, not what it "
                             f"computes): give them as RunOptions, to run(config, options), or "
                             f"in one flat dict to run()")
        if RUN in kw:
            raise ValueError(f"{RUN!r} is where a run folder's config.json keeps its run options, "
                             f"not a config field: read a config.json with saved_parts(saved) "
                             f"(config fields, run options) or as_run(saved)")
        for name in RENAMED:
            if name in kw:
                raise ValueError(f"{RENAMED[name]} (got {name}={kw[name]!r})")
        if unknown:
            raise ValueError(f"unknown config fields {unknown}; accepted: "
                             f"{', '.join(self.names() + list(EstimatorSettings.names()))} "
                             f"(run options: {', '.join(RunOptions.names())})")
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
        self._check()

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
        level (as a flat dict of overrides reads, and as earlier versions wrote config.json),
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

    def replace(self, **changes) -> "TrainConfig":
        """A copy with ``changes`` (checked)."""
        return dataclasses.replace(self, **changes)

    def _check(self) -> None:
        _check_types(self, skip=("estimator",))
        if not isinstance(self.estimator, EstimatorSettings):
            raise ValueError(f"estimator must be EstimatorSettings or a dict of its fields, got "
                             f"{self.estimator!r}")
        choices = {"dataset": data.available(), "model": models.available(),
                   "schedule": SCHEDULES}
        for name, accepted in choices.items():
            if getattr(self, name) not in accepted:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; accepted: "
                                 f"{', '.join(accepted)}")
        if self.estimator.scheme not in TRAIN_SCHEMES:
            raise ValueError(f"unknown scheme {self.estimator.scheme!r} for training; accepted: "
                             f"{', '.join(TRAIN_SCHEMES)}")
        if self.incremental and self.estimator.scheme != "il":
            raise ValueError("incremental (iPC) runs IL's inference steps (--iterations, "
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
                 ("probe_every", self.probe_every >= 0, ">= 0 (0: no probe)"),
                 ("probe_size", self.probe_size >= 1, ">= 1"),
                 ("eval_batch_size", self.eval_batch_size >= 1, ">= 1")]
        for name, ok, accepted in rules:
            if not ok:
                raise ValueError(f"{name} must be {accepted}, got {getattr(self, name)!r}")
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov needs momentum > 0 (or pass --no-nesterov)")


def _check_types(obj, skip=()) -> None:
    for name, ftype in flags.field_types(type(obj)).items():
        if name in skip:
            continue
        base, optional, value = ftype.base, ftype.optional, getattr(obj, name)
        if value is None and optional:
            continue
        ok = {int: isinstance(value, int) and not isinstance(value, bool),
              float: isinstance(value, (int, float)) and not isinstance(value, bool),
              bool: isinstance(value, bool), str: isinstance(value, str),
              dict: isinstance(value, dict)}[base]
        if not ok:
            raise ValueError(f"{name} must be {'None or ' if optional else ''}{base.__name__}, "
                             f"got {value!r}")


def split(d: dict) -> tuple[dict, dict]:
    """A flat dict of fields (a sweep point, a notebook's overrides, ``run(dict)``) as
    ``(config fields, run options)``."""
    options = set(RunOptions.names())
    return ({k: v for k, v in d.items() if k not in options},
            {k: v for k, v in d.items() if k in options})


def as_run(config, options=None) -> tuple[TrainConfig, RunOptions]:
    """``(TrainConfig, RunOptions)`` from ``config`` (a :class:`TrainConfig`, a dict of its
    fields and of run options, or a run folder's ``config.json``) and ``options`` (:class:`RunOptions`, a dict of its fields, or
    None), the fields in ``options`` over those in ``config``."""
    if isinstance(config, TrainConfig):
        given: dict = {}
    elif isinstance(config, dict):
        fields, given = saved_parts(config) if RUN in config else split(config)
        config = TrainConfig(**fields)
    else:
        raise ValueError(f"config must be a TrainConfig or a dict of its fields, got "
                         f"{type(config).__name__}")
    if isinstance(options, RunOptions):
        options = options.to_dict()
    elif options is not None and not isinstance(options, dict):
        raise ValueError(f"options must be RunOptions, a dict of its fields or None, got "
                         f"{type(options).__name__}")
    merged = {**given, **(options or {})}
    unknown = sorted(set(merged) - set(RunOptions.names()))
    if unknown:
        raise ValueError(f"unknown run options {unknown}; accepted: "
                         f"{', '.join(RunOptions.names())}")
    return config, RunOptions(**merged)


def record(config: TrainConfig, options: RunOptions) -> dict:
    """What ``config.json`` holds: the config's fields, the run options under ``"run"``."""
    return {**config.to_dict(), RUN: options.to_dict()}


#: estimator fields added since the estimator was nested, at what earlier runs did
_ADDED_ESTIMATOR = {"state_optimizer": "gd", "state_momentum": 0.9}


def upgrade(saved: dict) -> dict:
    """A ``config.json`` of any version in this version's layout (:func:`record`).

    Earlier versions wrote the run options beside the config's fields (now under ``"run"``);
    chose backprop and iPC by ``algorithm`` (``bp``: now scheme ``bp``; ``ipc``: now
    ``incremental``; ``ep``: the scheme alone); had no ``incremental`` / ``state_optimizer`` /
    ``state_momentum`` (off, ``gd``, 0.9). The first versions wrote the estimator's fields at the
    top level, had no ``signs`` / ``tol`` / ``fused`` / ``perturbation`` / ``step_size`` /
    ``schedule`` / ``preset`` (their runs: per-example signs, no tolerance, eager kernels,
    nudging, α = 1, the cosine per step, no preset) and ran fast mode's free phase under TF32: a
    strict run of theirs resumes exactly, a fast one cannot (:func:`resumable`)."""
    d = json.loads(json.dumps(saved))
    if "estimator" not in d:
        d = TrainConfig.migrate({**d, "signs": "example", "tol": None, "fused": False,
                                 "perturbation": "nudge", "step_size": 1.0,
                                 "schedule": "step", "preset": None})
    d["estimator"] = {**_ADDED_ESTIMATOR, **d["estimator"]}
    algorithm = d.pop("algorithm", None)
    if algorithm == "bp":
        d["estimator"]["scheme"] = "bp"
    d.setdefault("incremental", algorithm == "ipc")
    run = dict(d.pop(RUN, None) or {})
    for name in RunOptions.names():
        if name in d:
            run.setdefault(name, d.pop(name))
    return {**d, RUN: run}


def resumable(saved: dict) -> dict:
    """The config fields of a saved ``config.json`` that a resume compares with its own
    (:func:`saved_parts`); ``ValueError`` for a run of the first versions in fast precision,
    which cannot continue exactly: this version computes fast mode's free phase in IEEE fp32,
    theirs ran under TF32 (BENCHMARKS.md)."""
    if "estimator" not in saved and saved.get("precision") == "fast":
        raise ValueError("cannot resume: this run was trained in the fast precision of an "
                         "earlier version of the workbench (its free phase ran under TF32); "
                         "this version computes fast mode's free phase in IEEE fp32, so the "
                         "run cannot continue exactly. Start a new --run-dir, or resume it "
                         "with the version that wrote it (git_commit in its summary.json).")
    return saved_parts(saved)[0]


def saved_parts(saved: dict) -> tuple[dict, dict]:
    """An upgraded ``config.json`` as ``(config fields, run options)`` (an empty one: two
    empty dicts)."""
    if not saved:
        return {}, {}
    d = upgrade(saved)
    run = d.pop(RUN)
    return d, run


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    """One flag per field of both (the estimator's included). Defaults are applied in
    :func:`config_from_args`, so that ``--resume`` can tell the flags given from the ones left
    out."""
    choices = {"dataset": data.available(), "model": models.available(),
               "scheme": TRAIN_SCHEMES}
    flags.add_flags(p, TrainConfig(), suppress=True, choices=choices)
    flags.add_flags(p, RunOptions(), suppress=True)
    for name in RENAMED:            # a flag of an earlier version: say what replaced it
        p.add_argument(f"--{name}", action=_Renamed, help=argparse.SUPPRESS)


class _Renamed(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string}: {RENAMED[self.dest]}")


def config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, RunOptions]:
    """The flags given, over the saved config (``--resume``), else over the preset (``--preset``)
    and the defaults — TrainConfig itself fills what is not given."""
    given, given_options = flags.given(args, TrainConfig), flags.given(args, RunOptions)
    folder = RunFolder(given_options.get("run_dir") or "", writer=False)
    if not (given_options.get("resume") and folder.holds_run()):
        return TrainConfig.from_dict(given), RunOptions(**given_options)
    saved = folder.config()
    base, options = resumable(saved), saved_parts(saved)[1]
    est = {**base.pop("estimator", {}), **given.pop("estimator", {})}
    return (TrainConfig.from_dict({**base, **given, "estimator": est}),
            RunOptions(**{**options, **given_options}))
