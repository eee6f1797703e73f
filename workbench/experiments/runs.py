"""Reading run folders back for comparison: one :class:`Run` per folder, sweeps included.

:func:`find_runs` takes sweep folders (their ``plan.json`` lists every point, pending ones
too), run folders, or any folder holding either; :func:`differing` names the config fields
whose values differ between runs (the only columns worth a table); :func:`aggregate` groups
runs by some fields and averages a metric over the rest (the seeds), as the paper's tables do;
:func:`grid` arranges the result over two fields (Fig. 2's heat map). The
:class:`~workbench.widgets.RunsBrowser` widget and notebooks 05 and 06 draw from these.
"""
from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence

from ..engine.settings import is_auto
from ..files import read_json
from ..training.config import saved_parts
from ..training.runfolder import CONFIG, RunFolder, flat_config, read_state

__all__ = ["Run", "find_runs", "read_state", "flat_config", "differing", "aggregate", "grid",
           "METRICS", "value_label"]

#: metrics of an epoch row a comparison can show (fractions, except the losses)
METRICS = ("test_top1_error", "test_top5_error", "test_loss", "train_loss")
#: a sweep folder's plan (written by :mod:`workbench.experiments.sweep`, read here)
PLAN = "plan.json"


@dataclass
class Run:
    """One run folder (or a sweep point not started yet): config (what it computes, in this
    version's layout: :func:`workbench.training.config.upgrade`), metrics rows, state, and how
    it was run (``options``: its run options)."""
    path: Path
    name: str
    config: dict
    rows: list = field(default_factory=list)
    state: dict = field(default_factory=dict)
    sweep: Optional[str] = None
    options: dict = field(default_factory=dict)

    @property
    def flat(self) -> dict:
        return flat_config(self.config)

    @property
    def epochs(self) -> list[dict]:
        return [r for r in self.rows if r.get("type") == "epoch"]

    @property
    def probes(self) -> list[dict]:
        return [r for r in self.rows if r.get("type") == "probe"]

    def final(self, metric: str = "test_top1_error") -> Optional[float]:
        """The metric of the last epoch (None before the first)."""
        return self.epochs[-1].get(metric) if self.epochs else None

    def best(self, metric: str = "test_top1_error") -> Optional[float]:
        values = [r[metric] for r in self.epochs if _number(r.get(metric))]
        return min(values) if values else None

    @property
    def progress(self) -> str:
        return f"{self.state.get('epochs', 0)}/{self.config.get('epochs', '?')}"

    @classmethod
    def load(cls, folder, name: Optional[str] = None, config: Optional[dict] = None,
             sweep: Optional[str] = None) -> "Run":
        run = RunFolder(folder, writer=False)
        cfg, options = saved_parts(run.config() if run.holds_run() else dict(config or {}))
        rows = run.rows()
        return cls(run.path, name or run.path.name, cfg, rows,
                   run.state(cfg.get("epochs"), rows), sweep, options)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def find_runs(*paths) -> list[Run]:
    """The runs under ``paths``: a sweep folder gives its points in plan order (pending ones
    from the plan), a run folder itself, any other folder every sweep and run below it."""
    runs: list[Run] = []
    seen: set = set()
    for p in paths:
        for run in _find(Path(p)):
            key = run.path.resolve()
            if key not in seen:
                seen.add(key)
                runs.append(run)
    return runs


def _find(path: Path) -> Iterable[Run]:
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist (give sweep folders, run folders, or "
                                f"folders holding them)")
    plan = path / PLAN
    if plan.is_file():
        spec = read_json(plan, "a sweep's plan", "Run `workbench sweep FILE.yaml --dry-run` "
                         "to write it again")
        for point in spec["points"]:
            yield Run.load(path / point["name"], point["name"], point["config"], spec["name"])
        return
    if (path / CONFIG).is_file():
        yield Run.load(path)
        return
    for child in sorted(q for q in path.iterdir() if q.is_dir() and not q.name.startswith(".")):
        if (child / PLAN).is_file() or (child / CONFIG).is_file() or any(
                child.rglob(CONFIG)):
            yield from _find(child)


def differing(runs: Sequence[Run], ignore: Iterable[str] = ()) -> list[str]:
    """The config fields (flattened) whose values are not the same in every run, in the order
    of the first run's config (a value still to be decided for the device,
    :func:`workbench.engine.settings.is_auto` — a sweep point not started yet — counts as equal
    to any)."""
    flats = [r.flat for r in runs]
    keys: list[str] = []
    for f in flats:
        keys += [k for k in f if k not in keys]
    ignore = set(ignore)

    def values(k):
        return {json.dumps(f.get(k), sort_keys=True) for f in flats
                if not is_auto(k, f.get(k))}
    return [k for k in keys if k not in ignore and len(values(k)) > 1]


def value_label(v) -> str:
    return json.dumps(v) if isinstance(v, (list, dict)) or v is None else str(v)


def aggregate(runs: Sequence[Run], by: Sequence[str], metric: str = "test_top1_error",
              which: str = "final") -> list[dict]:
    """Group the runs by the values of fields ``by`` (flattened names) and summarise
    ``metric`` (the last epoch's, or the ``best``) over each group's finished runs: mean,
    sample standard deviation (0 for one run), count; groups in first-seen order."""
    groups: dict = {}
    for r in runs:
        key = tuple(value_label(r.flat.get(k)) for k in by)
        groups.setdefault(key, []).append(r)
    out = []
    for key, members in groups.items():
        values = [v for v in ((r.final(metric) if which == "final" else r.best(metric))
                              for r in members if r.state.get("state") == "done")
                  if _number(v)]
        out.append({**dict(zip(by, key)), "mean": statistics.fmean(values) if values else None,
                    "sd": statistics.stdev(values) if len(values) > 1 else (0.0 if values
                                                                            else None),
                    "n": len(values), "runs": len(members)})
    return out


def grid(runs: Sequence[Run], x: str, y: str, metric: str = "test_top1_error",
         which: str = "final") -> tuple[list, list, list[list]]:
    """``(xs, ys, z)``: the mean of ``metric`` over the finished runs at each (x, y) value
    pair (None where none finished), x and y sorted (numbers numerically)."""
    rows = aggregate(runs, [x, y], metric, which)

    def order(values):
        values = list(dict.fromkeys(values))
        try:
            return sorted(values, key=float)
        except ValueError:
            return values
    xs, ys = order(r[x] for r in rows), order(r[y] for r in rows)
    cell = {(r[x], r[y]): r["mean"] for r in rows}
    return xs, ys, [[cell.get((xv, yv)) for xv in xs] for yv in ys]
