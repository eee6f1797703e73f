"""Comparing runs: :class:`RunsBrowser`, a table, overlaid curves and a heat map of sweeps or
any run folders (read with :mod:`workbench.experiments.runs`)."""
from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Optional, Sequence

import ipywidgets as W
import plotly.graph_objects as go

from ..experiments import runs as R
from .common import MARGIN

__all__ = ["RunsBrowser", "sweep_folders", "table_html"]

STATE_COLOR = {"done": "#2ca02c", "failed": "#d62728", "started": "#ff7f0e",
               "running": "#1f77b4", "pending": "#7f7f7f"}


def sweep_folders(root="runs") -> list[Path]:
    """Every sweep folder (one with a ``plan.json``) under ``root``, sorted."""
    root = Path(root)
    return sorted(p.parent for p in root.rglob(R.PLAN)) if root.is_dir() else []


def _pct(v) -> str:
    return f"{100 * v:.2f}" if isinstance(v, (int, float)) and math.isfinite(v) else "–"


def table_html(runs: Sequence[R.Run], fields: Optional[Sequence[str]] = None) -> str:
    """An HTML table: one row per run with its state (and progress), the config fields that
    differ between the runs, and its final and best test errors (%)."""
    fields = list(R.differing(runs) if fields is None else fields)
    head = ["run", "state", "epochs", *fields, "final top-1 %", "best top-1 %", "final top-5 %"]
    body = []
    for r in runs:
        state = r.state.get("state", "?")
        err = r.state.get("error")
        cells = [html.escape(r.name),
                 f'<span style="color:{STATE_COLOR.get(state, "#000")}" '
                 f'title="{html.escape(err or "")}">{state}</span>', r.progress,
                 *[html.escape(R.value_label(r.flat.get(f))) for f in fields],
                 _pct(r.final("test_top1_error")), _pct(r.best("test_top1_error")),
                 _pct(r.final("test_top5_error"))]
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return ('<table class="workbench-runs"><thead><tr>'
            + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr></thead><tbody>"
            + "".join(body) + "</tbody></table>")


class RunsBrowser(W.VBox):
    """Choose a sweep (any folder with a ``plan.json`` under ``root``) or pass run folders;
    see a table of the runs (only the config fields that differ, final and best errors,
    unfinished runs with their progress), their curves overlaid (any epoch metric against
    epochs), and — for two differing fields — a heat map of the final metric, averaged over
    the seeds (Fig. 2's shape). ``refresh()`` (the button) rereads the folders, so a sweep can
    be watched while it runs.

    ``RunsBrowser("runs/sweeps/fig2-small")``, ``RunsBrowser(["runs/a", "runs/b"])``,
    ``RunsBrowser(root="runs")`` (choose from the sweeps found there).
    """

    def __init__(self, paths=None, root="runs", metric: str = "test_top1_error"):
        if metric not in R.METRICS:
            raise ValueError(f"metric must be one of {', '.join(R.METRICS)}, got {metric!r}")
        if isinstance(paths, (str, Path)):
            paths = [paths]
        options = [(str(p), [str(p)]) for p in sweep_folders(root)]
        if paths:
            options = [(", ".join(map(str, paths)), [str(p) for p in paths])] + options
        if not options:
            raise ValueError(f"no sweep folders under {root!r} and no run folders given: pass "
                             f"paths=[...] or run `workbench sweep FILE.yaml` first")
        self.source = W.Dropdown(options=options, description="runs", layout={"width": "60%"})
        self.metric = W.Dropdown(options=list(R.METRICS), value=metric, description="metric")
        self.heat_x = W.Dropdown(description="heat x")
        self.heat_y = W.Dropdown(description="heat y")
        self.reload = W.Button(description="refresh", icon="refresh")
        self.status = W.HTML()
        self.table = W.HTML()
        self.curves = go.FigureWidget(layout=dict(height=360, margin=MARGIN,
                                                  xaxis_title="epoch"))
        self.heatmap = go.FigureWidget(layout=dict(height=360, margin=MARGIN))
        self.runs: list[R.Run] = []
        for c in (self.source, self.metric, self.heat_x, self.heat_y):
            c.observe(lambda _: self.redraw(), names="value")
        self.source.observe(lambda _: self.refresh(), names="value")
        self.reload.on_click(lambda _: self.refresh())
        super().__init__([W.HBox([self.source, self.reload]),
                          W.HBox([self.metric, self.heat_x, self.heat_y]), self.status,
                          self.table, self.curves, self.heatmap])
        self.refresh()

    # -- data ----------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Reread the chosen folders; keep the heat map's axes where they still differ."""
        self.runs = R.find_runs(*self.source.value)
        fields = R.differing(self.runs)
        numeric = [f for f in fields if f != "seed"]
        old = (self.heat_x.value, self.heat_y.value)
        options = [("—", None)] + [(f, f) for f in numeric]
        with self.hold_trait_notifications():
            self.heat_x.options, self.heat_y.options = options, options
            x = old[0] if old[0] in numeric else (numeric[0] if len(numeric) >= 2 else None)
            y = old[1] if old[1] in numeric and old[1] != x else next(
                (f for f in numeric if f != x), None) if x else None
            self.heat_x.value, self.heat_y.value = x, y
        self.redraw()

    # -- drawing -------------------------------------------------------------------------------
    def redraw(self) -> None:
        metric, runs = self.metric.value, self.runs
        counts = {}
        for r in runs:
            counts[r.state.get("state")] = counts.get(r.state.get("state"), 0) + 1
        self.status.value = (f"{len(runs)} runs: " + ", ".join(f"{v} {k}" for k, v in
                                                              counts.items()))
        self.table.value = table_html(runs)
        fields = R.differing(runs)
        with self.curves.batch_update():
            self.curves.data = []
            for r in runs:
                rows = r.epochs
                if not rows:
                    continue
                label = ", ".join(f"{f}={R.value_label(r.flat.get(f))}" for f in fields) \
                    or r.name
                self.curves.add_scatter(x=[e["epoch"] for e in rows],
                                        y=[e.get(metric) for e in rows], mode="lines+markers",
                                        name=label[:60])
            self.curves.layout.yaxis.title = metric
            self.curves.layout.title = f"{metric} per epoch"
        x, y = self.heat_x.value, self.heat_y.value
        with self.heatmap.batch_update():
            self.heatmap.data = []
            if x and y and x != y:
                xs, ys, z = R.grid(runs, x, y, metric)
                self.heatmap.add_heatmap(
                    x=[str(v) for v in xs], y=[str(v) for v in ys], z=z, colorscale="Viridis",
                    colorbar=dict(title=metric), hovertemplate=f"{x}=%{{x}}<br>{y}=%{{y}}<br>"
                    f"{metric}=%{{z:.4f}}<extra></extra>")
                self.heatmap.layout.xaxis.title, self.heatmap.layout.yaxis.title = x, y
                self.heatmap.layout.title = f"final {metric} (mean over seeds)"
            else:
                self.heatmap.layout.title = "heat map: choose two fields that differ"
