"""``workbench sweep FILE.yaml``: many training runs from one file, idempotent, on one machine or
a Slurm cluster.

A sweep file (YAML; ``experiments/`` holds one per experiment of the paper)::

    name: fig2-small              # the sweep folder: <--out>/<name> (default: the file's stem)
    paper: Fig. 2                 # free text: what it reproduces
    description: ...
    base:                         # TrainConfig fields and run options (workbench train's flags,
                                  # underscored);
      preset: vgg5-fashion-mnist-ce   # a preset fills every field not given
      epochs: 3
    grid:                         # the cartesian product of the axes, in this order
      beta: [0.001, 0.01, 0.1]
      iterations: [1, 3, 5]
      nudge:                      # an axis that is not a field: each value sets several fields
        - {cost: ce}
        - {perturbation: clamp, cost: mse}
    points:                       # more points, each on its own (not crossed with the grid)
      - {scheme: bp}              # backprop
    seeds: [0, 1, 2]              # every point runs once per seed (default: [base seed or 0])
    slurm: {timeout_min: 2880, gpus_per_node: 1}   # defaults of the Slurm launcher

Every point is ``base`` + its overrides + its seed, run by the same :func:`workbench.training.train.run`
into its own run folder ``<sweep folder>/<name>``, named by its overrides
(``beta=0.01,iterations=3,seed=0``). The sweep folder keeps ``sweep.yaml`` (the file as given)
and ``plan.json`` (every point's overrides and full config).

The whole file is checked before anything runs: unknown keys and fields, empty axes, values the
config refuses, duplicate points, and points whose run folder holds a run of another config are
rejected with the field and the point named. Running again is idempotent: finished points are
skipped, started ones (killed, pre-empted) resume from their checkpoint, failed ones are reported
with their error (``--retry-failed`` runs them again). Each point holds a lock while it runs, so
two launchers never run the same point.

Launchers: ``local`` runs the points as subprocesses, one per slot (``--slots N``; on a GPU
server the default is one slot per visible GPU, each child seeing only its own through
``CUDA_VISIBLE_DEVICES``); ``slurm`` submits one job array through submitit (one point per
task; a task that times out or is pre-empted is requeued and resumes from its run folder).
``--notebooks`` runs each point as papermill on ``notebooks/03_train.ipynb`` instead, keeping the
executed notebook in the run folder.
"""
from __future__ import annotations

import argparse
import fcntl
import functools
import hashlib
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml

from ..engine.settings import EstimatorSettings
from ..files import read_json, write_atomic
from ..flags import field_types
from ..training.config import (RENAMED, RunOptions, TrainConfig, record, resumable, split)
from ..training.distributed import process_rank
from ..training.runfolder import CONFIG, RunFolder, config_diff, flat_config, read_state
from .runs import PLAN

__all__ = ["Sweep", "Point", "SweepError", "load", "point_state", "run_local", "run_slurm",
           "run_point", "PointTask", "add_arguments", "main", "read_yaml", "slurm_executor",
           "NOTEBOOK", "LOG_FILE"]

KEYS = ("name", "paper", "description", "base", "grid", "points", "seeds", "slurm")
#: fields a sweep manages itself (each point's folder, and whether it resumes)
MANAGED = ("run_dir", "resume")
LOG_FILE, SWEEP_FILE = "sweep.log", "sweep.yaml"
NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "03_train.ipynb"


class SweepError(ValueError):
    """A sweep file that cannot run, with the field and the point that are wrong."""


# ---------------------------------------------------------------------------------------------
# reading a sweep file
# ---------------------------------------------------------------------------------------------
class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-4`` as a string (it wants ``1.0e-4``); here it is a float."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[0-9][0-9_]*[eE][-+]?[0-9]+"
               r"|\.[0-9_]+(?:[eE][-+]?[0-9]+)?|\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))


def read_yaml(text: str, where: str = "sweep file"):
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        raise SweepError(f"{where}: not valid YAML: {e}") from None


@dataclass
class Point:
    """One run of a sweep: its folder name, the fields it sets over the base, its config and
    its run options (its folder among them)."""
    name: str
    overrides: dict
    config: TrainConfig
    options: RunOptions

    @property
    def folder(self) -> Path:
        return Path(self.options.run_dir)


@dataclass
class Sweep:
    name: str
    file: str
    folder: Path
    points: list[Point]
    spec: dict = field(default_factory=dict)
    #: the file's text, recorded as sweep.yaml (None: the spec is written out, e.g. with --set)
    text: Optional[str] = None

    @property
    def axes(self) -> dict:
        """The grid's axes: name → list of values (as written in the file)."""
        return dict(self.spec.get("grid") or {})

    def point(self, name: str) -> Point:
        for p in self.points:
            if p.name == name:
                return p
        raise SweepError(f"sweep {self.name!r} has no point {name!r}")


def _fields() -> set:
    return set(TrainConfig.names()) | set(EstimatorSettings.names()) | set(RunOptions.names())


def _format(value) -> str:
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    return str(value)


def point_name(overrides: dict) -> str:
    """``beta=0.01,iterations=3,seed=0``: the overrides in order, safe as one folder name."""
    text = ",".join(f"{k}={_format(v)}" for k, v in flat_config(overrides).items())
    text = re.sub(r"[^A-Za-z0-9=,.+\-_\[\]:]", "_", text) or "base"
    if len(text) > 120:                   # folder names stay well under the 255-byte limit
        text = text[:100] + "-" + hashlib.sha1(text.encode()).hexdigest()[:10]
    return text


def _coerce(name: str, value):
    """Numbers written as text (``"1e-4"`` in quotes) for float fields become floats; ints for
    float fields become floats, so a point's config reads the same however it was written."""
    ftype = _types().get(name)
    if ftype is not None and ftype.base is float and not isinstance(value, bool):
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                return value
        if isinstance(value, int):
            return float(value)
    return value


@functools.cache
def _types() -> dict:
    return {**field_types(TrainConfig), **field_types(EstimatorSettings),
            **field_types(RunOptions)}


def _check_fields(mapping, where: str, file: str) -> dict:
    if not isinstance(mapping, dict):
        raise SweepError(f"{file}: {where} must be a mapping of config fields, got "
                         f"{type(mapping).__name__} {mapping!r}")
    known = _fields()
    for k in mapping:
        if k in MANAGED:
            raise SweepError(f"{file}: {where} sets {k!r}, which the sweep manages itself "
                             f"(each point runs in <sweep folder>/<point name>); remove it")
        if k == "seed":
            raise SweepError(f"{file}: {where} sets 'seed'; give the seeds as the top-level "
                             f"'seeds: [...]' list")
        if k in RENAMED:
            raise SweepError(f"{file}: {where}: {RENAMED[k]}")
        if k not in known:
            raise SweepError(f"{file}: {where}: unknown field {k!r}; accepted: the fields of "
                             f"`workbench train` (underscored): {', '.join(sorted(known))}")
    return {k: _coerce(k, v) for k, v in mapping.items()}


def _grid(grid, file: str) -> list[dict]:
    if grid is None:
        return []
    if not isinstance(grid, dict) or not grid:
        raise SweepError(f"{file}: grid must be a non-empty mapping of axis → list of values, "
                         f"got {grid!r}")
    axes = []
    known = _fields()
    for axis, values in grid.items():
        if not isinstance(values, list) or not values:
            raise SweepError(f"{file}: grid axis {axis!r} must be a non-empty list of values, "
                             f"got {values!r}")
        if axis in known:
            if any(isinstance(v, dict) for v in values) and axis not in ("model_args",
                                                                         "data_args"):
                raise SweepError(f"{file}: grid axis {axis!r} is a field; its values must be "
                                 f"values of {axis!r}, not mappings (name the axis otherwise to "
                                 f"set several fields per value)")
            axes.append([_check_fields({axis: v}, f"grid axis {axis!r}", file)
                         for v in values])
        else:
            if not all(isinstance(v, dict) for v in values):
                raise SweepError(f"{file}: grid axis {axis!r} is not a config field, so each of "
                                 f"its values must be a mapping of fields (e.g. {{cost: mse, "
                                 f"perturbation: clamp}}); accepted fields: "
                                 f"{', '.join(sorted(known))}")
            axes.append([_check_fields(v, f"grid axis {axis!r} value {v!r}", file)
                         for v in values])
    return [{k: v for d in combo for k, v in d.items()} for combo in itertools.product(*axes)]


def _merge(base: dict, overrides: dict) -> dict:
    """``base`` with ``overrides`` over it; the dict fields (``model_args``, ``data_args``)
    merge key by key, so a point's ``model_args: {output_gain: 0.2}`` keeps the base's
    ``channels``."""
    out = {**base, **overrides}
    for k in ("model_args", "data_args"):
        if isinstance(base.get(k), dict) and isinstance(overrides.get(k), dict):
            out[k] = {**base[k], **overrides[k]}
    return out


def load(path, out: Optional[str] = None, text: Optional[str] = None,
         settings: Optional[dict] = None, name: Optional[str] = None) -> Sweep:
    """Read and check sweep file ``path``: every point is built and validated (and compared
    with what its run folder already holds) before this returns. ``settings``: fields set over
    the file's ``base`` (``--set``, e.g. ``data_root``). Raises :class:`SweepError`."""
    path = Path(path)
    file = str(path)
    if text is None:
        if not path.is_file():
            raise SweepError(f"sweep file {file} does not exist")
        text = path.read_text()
    spec = read_yaml(text, file)
    if not isinstance(spec, dict):
        raise SweepError(f"{file}: a sweep file is a mapping with keys {', '.join(KEYS)}")
    unknown = sorted(set(spec) - set(KEYS))
    if unknown:
        raise SweepError(f"{file}: unknown keys {unknown}; accepted: {', '.join(KEYS)}")
    name = str(name or spec.get("name") or path.stem)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._\-]*", name):
        raise SweepError(f"{file}: name {name!r} must be a folder name (letters, digits, . _ -)")
    base = _check_fields(spec.get("base") or {}, "base", file)
    if settings:
        base = _merge(base, _check_fields(settings, "--set", file))
        spec = {**spec, "base": {**(spec.get("base") or {}), **settings}}
    grid = _grid(spec.get("grid"), file)
    extra = spec.get("points") or []
    if not isinstance(extra, list):
        raise SweepError(f"{file}: points must be a list of mappings of overrides, got {extra!r}")
    extra = [_check_fields(p, f"points[{i}]", file) for i, p in enumerate(extra)]
    seeds = spec.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise SweepError(f"{file}: seeds must be a non-empty list of integers >= 0, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise SweepError(f"{file}: seeds {seeds} repeat a seed")
    slurm = spec.get("slurm") or {}
    if not isinstance(slurm, dict):
        raise SweepError(f"{file}: slurm must be a mapping of submitit parameters, got {slurm!r}")
    overrides = (grid + extra) or [{}]
    folder = Path(out or "runs/sweeps") / name
    points, seen = [], set()
    for o in overrides:
        for seed in seeds:
            ov = {**o, "seed": seed}
            pname = point_name(ov)
            if pname in seen:
                raise SweepError(f"{file}: point {pname!r} appears twice (grid and points, or "
                                 f"two equal values); each point must be different")
            seen.add(pname)
            fields, options = split(_merge(base, o))
            try:
                cfg = TrainConfig(**fields, seed=seed)
                opts = RunOptions(**options, run_dir=str(folder / pname))
            except (ValueError, TypeError) as e:
                raise SweepError(f"{file}: point {pname!r}: {e}") from None
            points.append(Point(pname, ov, cfg, opts))
    sweep = Sweep(name, file, folder, points, spec, None if settings else text)
    for p in points:
        _check_folder(p, file)
    return sweep


def _check_folder(p: Point, file: str) -> None:
    """A point's folder may hold only a run of the same config (run earlier by this sweep)."""
    saved = p.folder / CONFIG
    if not saved.is_file():
        return
    try:
        old = resumable(read_json(saved, "the run's config"))
    except ValueError as e:
        raise SweepError(f"{file}: point {p.name!r}: its run folder {p.folder} cannot be "
                         f"resumed: {e}") from None
    diff = config_diff(old, _comparable(p.config, old))
    if diff:
        raise SweepError(f"{file}: point {p.name!r}: its run folder {p.folder} holds a run of "
                         f"another config (saved → now):\n  " + "\n  ".join(diff) +
                         "\nThe sweep file changed since that run: give the sweep another name "
                         "or --out, or move the old folder away (nothing was overwritten).")


def _comparable(cfg: TrainConfig, saved: dict) -> dict:
    """The point's config as its run folder records it: where the point leaves precision
    (``auto``) or fused (``None``) to the device, the run recorded what they resolved to."""
    d = cfg.to_dict()
    d["estimator"] = cfg.estimator.as_recorded(saved.get("estimator", {}))
    return d


# ---------------------------------------------------------------------------------------------
# the state of a point, from its run folder
# ---------------------------------------------------------------------------------------------
def _lock_path(p: Point) -> Path:
    return p.folder.parent / ".locks" / p.name


def _locked(p: Point) -> bool:
    path = _lock_path(p)
    if not path.exists():
        return False
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False


def point_state(p: Point, lock: bool = True) -> dict:
    """``{"state": ..., "epochs": done, "of": total, "error": ...}``: the run folder's state
    (:func:`workbench.experiments.runs.read_state`: ``done``, ``failed``, ``started`` — killed or
    pre-empted, it resumes — or ``pending``), or ``running`` while its lock is held
    (``lock=False``: asked by the lock's holder)."""
    out = {"point": p.name, **read_state(p.folder, p.config.epochs)}
    if lock and _locked(p):
        out["state"] = "running"
    return out


def write_plan(sweep: Sweep) -> None:
    """``sweep.yaml`` (the file as given) and ``plan.json`` in the sweep folder."""
    sweep.folder.mkdir(parents=True, exist_ok=True)
    text = sweep.text if sweep.text is not None else yaml.safe_dump(sweep.spec,
                                                                     sort_keys=False)
    plan = {"name": sweep.name, "file": sweep.file, "axes": sweep.axes,
            "points": [{"name": p.name, "overrides": p.overrides,
                        "config": record(p.config, p.options)}
                       for p in sweep.points]}
    write_atomic(sweep.folder / SWEEP_FILE, lambda f: f.write(text.encode()))
    write_atomic(sweep.folder / PLAN,
                 lambda f: f.write((json.dumps(plan, indent=1) + "\n").encode()))


def from_folder(folder) -> Sweep:
    """The sweep whose folder is ``folder`` (its ``sweep.yaml``), for workers and browsers."""
    folder = Path(folder)
    if not (folder / SWEEP_FILE).is_file():
        raise SweepError(f"{folder} is not a sweep folder (no {SWEEP_FILE})")
    return load(folder / SWEEP_FILE, out=str(folder.parent),
                text=(folder / SWEEP_FILE).read_text(), name=folder.name)


def plan_text(sweep: Sweep) -> str:
    states = [point_state(p) for p in sweep.points]
    width = max(len(p.name) for p in sweep.points)
    lines = [f"sweep {sweep.name}: {len(sweep.points)} points in {sweep.folder}"]
    for s in states:
        extra = f"  {s['epochs']}/{s['of']} epochs" if s["state"] in ("started", "running") \
            else ""
        if s["state"] == "done" and s.get("test_top1_error") is not None:
            extra = f"  test top-1 error {s['test_top1_error']:.4f}"
        if s["error"]:
            extra = f"  {s['error']}"
        lines.append(f"  {s['point']:<{width}}  {s['state']:<8}{extra}")
    counts = {k: sum(s["state"] == k for s in states)
              for k in ("done", "failed", "running", "started", "pending")}
    lines.append("  " + ", ".join(f"{v} {k}" for k, v in counts.items() if v))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# running one point (in a worker process, a Slurm task, or here)
# ---------------------------------------------------------------------------------------------
def run_point(folder, name: str, notebooks: bool = False) -> dict:
    """Run (or resume) point ``name`` of the sweep in ``folder``; return its state. Holds the
    point's lock while it runs; an exception is written to the point's error file and raised.
    In a multi-process point (Slurm tasks, torchrun) only rank 0 takes the lock and writes;
    every rank runs the same training (:mod:`workbench.training.distributed`)."""
    sweep = from_folder(folder)
    p = sweep.point(name)
    if process_rank() != 0:
        return _run(p, notebooks, writer=False)
    lock = _lock_path(p)
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return {**point_state(p), "state": "running"}
        return _run(p, notebooks, writer=True)


def _run(p: Point, notebooks: bool, writer: bool) -> dict:
    state = point_state(p, lock=False)
    if state["state"] == "done":
        return state
    # decided before the training's rendezvous, so every rank sees the folder as it was
    options = p.options.replace(resume=(p.folder / CONFIG).is_file(), progress="text")
    folder = RunFolder(p.folder, writer=writer)
    if writer:
        p.folder.mkdir(parents=True, exist_ok=True)
        folder.clear_outcome()                              # a failed run, tried again
    try:
        if notebooks:
            _run_notebook(p.config, options)
        else:
            from ..training.train import run
            run(p.config, options)
    except Exception as e:      # (a signal or Ctrl-C is no failure: the point resumes)
        if writer:
            # first line: what went wrong (the state shows it); then the whole traceback
            folder.record_error(f"{type(e).__name__}: {e}\n\n"
                                + "".join(traceback.format_exception(e)))
        raise
    return point_state(p, lock=False)


def _run_notebook(cfg: TrainConfig, options: RunOptions) -> None:
    """Papermill on notebooks/03_train.ipynb with the point's whole config and run options as
    ``overrides``; the executed notebook stays in the run folder as ``03_train.ipynb``."""
    import papermill
    d = {**cfg.to_dict(), **options.to_dict()}
    d.update(d.pop("estimator"))            # flat: over the notebook's own flat parameters
    run_dir, resume = d.pop("run_dir"), d.pop("resume")
    d.pop("progress")
    # the kernel: this interpreter's own kernelspec first (a venv's), as the Makefile does
    share = Path(sys.prefix) / "share" / "jupyter"
    if (share / "kernels" / "python3").is_dir():
        os.environ["JUPYTER_PATH"] = os.pathsep.join(
            [str(share)] + [p for p in [os.environ.get("JUPYTER_PATH")] if p])
    out = Path(run_dir) / NOTEBOOK.name
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    papermill.execute_notebook(str(NOTEBOOK), str(out), cwd=str(Path.cwd()),
                               kernel_name="python3",
                               parameters={"run_dir": run_dir, "resume": resume,
                                           "progress": "text", "overrides": d},
                               progress_bar=False)


# ---------------------------------------------------------------------------------------------
# launchers
# ---------------------------------------------------------------------------------------------
def _todo(sweep: Sweep, retry_failed: bool) -> list[Point]:
    todo = []
    for p in sweep.points:
        s = point_state(p)["state"]
        if s in ("pending", "started") or (s == "failed" and retry_failed):
            todo.append(p)
    return todo


def _gpu_slots() -> list[str]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [v for v in visible.split(",") if v.strip() and v.strip() != "-1"]
    try:
        import torch
        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:          # noqa: BLE001 — no CUDA runtime: no GPU slots
        return []


def _die_with_parent() -> None:
    """In the child, before exec: be sent SIGTERM when the launcher dies (Linux), so that a
    killed launcher leaves no orphan training (its checkpoint is atomic, so it resumes)."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run_local(sweep: Sweep, slots: Optional[int] = None, notebooks: bool = False,
              retry_failed: bool = False, log=print, gpus_per_point: int = 1) -> list[dict]:
    """Run the points that need it as subprocesses, ``slots`` at a time: one per visible GPU
    (``CUDA_VISIBLE_DEVICES`` set per child; ``slots`` > GPUs shares them round robin) or,
    without GPUs, ``slots`` CPU processes sharing the cores. ``gpus_per_point`` N > 1: each
    point is one data-parallel run, a ``torchrun`` of N processes on a group of N visible GPUs.
    Returns every point's state."""
    write_plan(sweep)
    todo = _todo(sweep, retry_failed)
    gpus = _gpu_slots() if all(p.options.device in ("auto", "cuda") for p in sweep.points) \
        else []
    if gpus_per_point > 1:
        if len(gpus) < gpus_per_point:
            raise SweepError(f"--gpus-per-point {gpus_per_point}: only {len(gpus)} GPU(s) visible "
                             f"to the points (CUDA_VISIBLE_DEVICES, device: auto or cuda)")
        gpus = [",".join(gpus[i:i + gpus_per_point])
                for i in range(0, len(gpus) - gpus_per_point + 1, gpus_per_point)]
    if gpus:                 # --slots N: N processes over the GPUs, round robin
        names = [gpus[i % len(gpus)] for i in range(slots or len(gpus))]
    else:
        names = [None] * (slots or 1)
    threads = max(1, (os.cpu_count() or 1) // len(names))
    free, running = list(names), {}
    log(f"sweep {sweep.name}: {len(sweep.points)} points, {len(todo)} to run, "
        f"{len(names)} slot(s) ({'GPUs ' + ','.join(names) if gpus else 'CPU'}) "
        f"in {sweep.folder}")
    queue = list(todo)
    while queue or running:
        while queue and free:
            p, slot = queue.pop(0), free.pop(0)
            env = dict(os.environ)
            if slot is not None:
                env["CUDA_VISIBLE_DEVICES"] = slot
            else:
                env["OMP_NUM_THREADS"] = str(threads)
            p.folder.mkdir(parents=True, exist_ok=True)
            logf = open(p.folder / LOG_FILE, "ab")
            cmd = [sys.executable, "-m", "workbench.experiments.sweep", str(sweep.folder), p.name]
            if gpus_per_point > 1:          # one rendezvous per point, on a free port
                cmd[1:1] = ["-m", "torch.distributed.run", "--standalone",
                            "--nproc_per_node", str(gpus_per_point)]
            if notebooks:
                cmd.append("--notebooks")
            proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env,
                                    preexec_fn=_die_with_parent)
            logf.close()
            running[proc] = (p, slot, time.monotonic())
            log(f"  start {p.name}" + (f" on GPU {slot}" if slot is not None and "," not in slot
                                       else f" on GPUs {slot}" if slot is not None else ""))
        time.sleep(0.2)
        for proc in [q for q in running if q.poll() is not None]:
            p, slot, t0 = running.pop(proc)
            free.append(slot)
            s = point_state(p)
            what = (f"test top-1 error {s['test_top1_error']:.4f}" if s["state"] == "done"
                    and s.get("test_top1_error") is not None else s["error"] or "")
            log(f"  {s['state']:<6} {p.name}  {what}  ({time.monotonic() - t0:.0f} s; log: "
                f"{p.folder / LOG_FILE})")
    return [point_state(p) for p in sweep.points]


class PointTask:
    """One Slurm array task: run one point of a sweep (``__call__``); on a timeout or a
    pre-emption submitit calls :meth:`checkpoint`, which requeues the same point — it resumes
    from its run folder's last checkpoint."""

    def __init__(self, folder: str, notebooks: bool = False):
        self.folder, self.notebooks = str(folder), notebooks

    def __call__(self, name: str) -> dict:
        return run_point(self.folder, name, self.notebooks)

    def checkpoint(self, name: str):
        import submitit
        return submitit.helpers.DelayedSubmission(PointTask(self.folder, self.notebooks), name)


#: the Slurm launcher's defaults; the sweep file's ``slurm:`` and ``--slurm KEY=VALUE`` win
SLURM_DEFAULTS = {"timeout_min": 24 * 60, "gpus_per_node": 1, "tasks_per_node": 1,
                  "cpus_per_task": 8, "slurm_signal_delay_s": 120}


def slurm_executor(sweep: Sweep, params: Optional[dict] = None, cluster: str = "slurm"):
    """A submitit executor for the sweep's job array (``cluster="local"``: submitit's local
    executor, real subprocesses, for tests and for machines without Slurm)."""
    try:
        import submitit
    except ImportError:
        raise SweepError("the slurm launcher needs submitit: pip install 'workbench[slurm]' "
                         "(or pip install submitit)") from None
    params = {**SLURM_DEFAULTS, **(sweep.spec.get("slurm") or {}), **(params or {})}
    todo = _todo(sweep, False)
    executor = submitit.AutoExecutor(folder=str(sweep.folder / "slurm" / "%j"), cluster=cluster)
    params.setdefault("slurm_array_parallelism", max(1, len(todo)))
    params.setdefault("name", f"workbench-{sweep.name}")
    if cluster != "slurm":
        params = {k: v for k, v in params.items() if not k.startswith("slurm_")}
    try:
        executor.update_parameters(**params)
    except (ValueError, TypeError, NameError) as e:      # submitit: NameError for unknown
        raise SweepError(f"bad Slurm parameter: {e}") from None
    return executor


def run_slurm(sweep: Sweep, params: Optional[dict] = None, notebooks: bool = False,
              retry_failed: bool = False, wait: bool = False, cluster: str = "slurm",
              log=print) -> list:
    """Submit one job array, a task per point that needs running; ``wait``: block until the
    tasks end. Returns the submitit jobs."""
    write_plan(sweep)
    todo = _todo(sweep, retry_failed)
    if not todo:
        log(f"sweep {sweep.name}: nothing to run")
        return []
    executor = slurm_executor(sweep, params, cluster)
    with executor.batch():
        # an absolute folder: a task may start in another working directory
        jobs = [executor.submit(PointTask(str(sweep.folder.resolve()), notebooks), p.name)
                for p in todo]
    log(f"sweep {sweep.name}: submitted {len(jobs)} task(s): "
        f"{', '.join(str(j.job_id) for j in jobs[:3])}{' …' if len(jobs) > 3 else ''}; "
        f"submitit logs in {sweep.folder / 'slurm'}")
    if wait:
        if cluster == "slurm":
            wait_for_slurm([j.job_id for j in jobs])
        else:
            for j in jobs:
                try:
                    j.result()
                except Exception:        # noqa: BLE001 — reported from the run folder below
                    pass
        for p in todo:
            state = point_state(p)
            if state["state"] != "done":
                log(f"  {p.name}: {state['state']}" + (f" ({state['error']})"
                                                       if state.get("error") else ""))
    return jobs


def wait_for_slurm(job_ids, poll: float = 2.0) -> None:
    """Block until none of the jobs (array tasks ``1234_5`` included) is in Slurm's queue any
    more — a requeued task counts as queued. Asked of ``squeue``, not of submitit's job states,
    which come from ``sacct``: a cluster without an accounting database answers every such call
    with a warning (and the outcome is in the run folders anyway)."""
    ids = sorted({str(j).split("_")[0] for j in job_ids})
    while ids:
        out = subprocess.run(["squeue", "-h", "-o", "%i", "-j", ",".join(ids)],
                             capture_output=True, text=True, timeout=60)
        if out.returncode == 0 and not out.stdout.strip():
            return
        if out.returncode != 0 and "Invalid job id" in out.stderr:     # ended and purged
            return
        time.sleep(poll)


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="the sweep file (YAML; experiments/ has the paper's)")
    p.add_argument("--out", default="runs/sweeps",
                   help="folder of sweep folders (default: runs/sweeps)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   dest="settings",
                   help="a config field over the file's base, for every point (data_root=..., "
                        "workers=8, device=cuda); recorded in the sweep folder; repeatable")
    p.add_argument("--dry-run", action="store_true",
                   help="check the file and print the plan with each point's state; run nothing")
    p.add_argument("--launcher", choices=("local", "slurm"), default="local",
                   help="local: subprocesses on this machine; slurm: a submitit job array")
    p.add_argument("--slots", type=int, default=None,
                   help="points at once (local; default: one per visible GPU, else 1; more "
                        "slots than GPUs share them round robin)")
    p.add_argument("--gpus-per-point", type=int, default=1, metavar="N",
                   help="local: each point one data-parallel run over N GPUs (a torchrun of N "
                        "processes per group of N visible GPUs)")
    p.add_argument("--notebooks", action="store_true",
                   help="run each point as papermill on notebooks/03_train.ipynb (the executed "
                        "notebook stays in its run folder)")
    p.add_argument("--retry-failed", action="store_true", help="run failed points again")
    p.add_argument("--slurm", action="append", default=[], metavar="KEY=VALUE",
                   help="a submitit parameter (timeout_min=600, slurm_partition=gpu, "
                        "gpus_per_node=1, …) over the sweep file's slurm: section; repeatable")
    p.add_argument("--wait", action="store_true", help="slurm: wait for the tasks to end")


def _key_values(items: list[str], flag: str) -> dict:
    out = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise SweepError(f"{flag} expects KEY=VALUE, got {item!r}")
        out[k] = read_yaml(v, f"{flag} {item}")
    return out


def main(args: argparse.Namespace) -> int:
    if args.slots is not None and args.slots < 1:
        raise SweepError(f"--slots must be >= 1, got {args.slots}")
    if args.gpus_per_point < 1:
        raise SweepError(f"--gpus-per-point must be >= 1, got {args.gpus_per_point}")
    if args.notebooks and not NOTEBOOK.is_file():
        raise SweepError(f"--notebooks runs {NOTEBOOK}, which is not there: it needs the "
                         f"repository's notebooks/ (a checkout with `pip install -e .`)")
    sweep = load(args.file, args.out, settings=_key_values(args.settings, "--set"))
    if args.dry_run:
        print(plan_text(sweep))
        return 0
    if args.launcher == "slurm":
        run_slurm(sweep, _key_values(args.slurm, "--slurm"), args.notebooks, args.retry_failed,
                  args.wait)
        if not args.wait:
            return 0
    else:
        run_local(sweep, args.slots, args.notebooks, args.retry_failed,
                  gpus_per_point=args.gpus_per_point)
    print(plan_text(sweep))
    return 1 if any(point_state(p)["state"] == "failed" for p in sweep.points) else 0


def _worker(argv: list[str]) -> int:
    """``python -m workbench.experiments.sweep FOLDER POINT [--notebooks]``: one point, in its own
    process (what the local launcher starts)."""
    notebooks = "--notebooks" in argv
    folder, name = [a for a in argv if a != "--notebooks"]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    print(f"workbench sweep: point {name} (pid {os.getpid()}, CUDA_VISIBLE_DEVICES="
          f"{os.environ.get('CUDA_VISIBLE_DEVICES', '')}, OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', '')}) at {time.strftime('%Y-%m-%d %H:%M:%S')}",
          flush=True)
    try:
        state = run_point(folder, name, notebooks)
    except Exception as e:           # noqa: BLE001 — written to the point's error file
        print(f"workbench sweep: point {name} failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0 if state["state"] in ("done", "running") else 1


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1:]))
