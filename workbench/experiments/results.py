"""The paper's figures and tables drawn from the runs of the sweeps in ``experiments/``
(notebook 06), with the paper's printed numbers beside ours where it printed numbers.

Each ``figN`` / ``tableN`` function takes the runs of its sweep (:func:`workbench.experiments.runs.find_runs`
on the sweep folder; the paper-size sweep or its ``-small`` variant) and returns what to show:
plotly figures and HTML tables. Only finished runs enter a mean; a table says how many did.
The experiments themselves: docs/method.md §8.
"""
from __future__ import annotations

import html
import math
import re
from typing import Callable, Optional, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..engine.settings import EstimatorSettings
from ..training.presets import PAPER_TABLE1, PAPER_TABLE2
from . import runs as R

__all__ = ["EXPERIMENTS", "method", "fig1", "fig2", "fig3", "fig4", "fig5", "table1", "table2",
           "table3", "by_model", "depth", "layers_of", "html_table", "mean_curve"]

MARGIN = dict(t=50, b=40, l=50, r=10)


def method(run: R.Run) -> str:
    """``BP``, ``iPC``, ``IL`` or the EP scheme of a run."""
    scheme = run.flat.get("scheme", "?")
    if run.config.get("incremental"):
        return "iPC"
    return {"bp": "BP", "il": "IL"}.get(scheme, scheme)


def _done(runs: Sequence[R.Run]) -> list[R.Run]:
    return [r for r in runs if r.state.get("state") == "done"]


def _pct(mean, sd=None, n=None) -> str:
    if mean is None or not math.isfinite(mean):
        return "–"
    text = f"{100 * mean:.2f}"
    if sd is not None and n and n > 1:
        text += f" ± {100 * sd:.2f}"
    return text


def _paper(mean: float, sd: float) -> str:
    """A number as the paper prints it: two decimals below 1 %, one above."""
    digits = 2 if mean < 1 else 1
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


def html_table(head: Sequence[str], rows: Sequence[Sequence], caption: str = "") -> str:
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return (f'<table class="workbench-results">{cap}<thead><tr>'
            + "".join(f"<th>{html.escape(str(h))}</th>" for h in head) + "</tr></thead><tbody>"
            + "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row)
                      + "</tr>" for row in rows) + "</tbody></table>")


def mean_curve(runs: Sequence[R.Run], metric: str) -> tuple[list, list]:
    """Epochs and the mean of ``metric`` over the runs at each epoch all of them reached."""
    curves = [{e["epoch"]: e.get(metric) for e in r.epochs} for r in runs if r.epochs]
    if not curves:
        return [], []
    epochs = sorted(set.intersection(*(set(c) for c in curves)))
    return epochs, [sum(c[e] for c in curves) / len(curves) for e in epochs]


def _label(run: R.Run, fields: Sequence[str]) -> str:
    """``field=value, …`` of a run; a BP run leaves out the estimator's fields (unused)."""
    if method(run) == "BP":
        fields = [f for f in fields if f not in EstimatorSettings.names()]
    return ", ".join(f"{f}={R.value_label(run.flat.get(f))}" for f in fields)


def _groups(runs: Sequence[R.Run], key: Callable[[R.Run], tuple]) -> dict:
    out: dict = {}
    for r in runs:
        out.setdefault(key(r), []).append(r)
    return out


def _summary(runs: Sequence[R.Run], metric="test_top1_error") -> tuple:
    agg = R.aggregate(runs, [], metric)[0] if runs else {"mean": None, "sd": None, "n": 0}
    return agg["mean"], agg["sd"], agg["n"]


def _final(members: Sequence[R.Run]) -> tuple[str, str, str]:
    """``("n/N finished", top-1 %, top-5 %)`` of a group of runs: mean ± sd over the finished."""
    done = _done(members)
    m1, s1, n = _summary(done)
    m5, s5, _ = _summary(done, "test_top5_error")
    return f"{n}/{len(members)}", _pct(m1, s1, n), _pct(m5, s5, n)


def _perturbation(run: R.Run) -> str:
    f = run.flat
    return "clamp" if f.get("perturbation") == "clamp" else f"{f.get('cost', '?').upper()}-nudge"


# ---------------------------------------------------------------------------------------------
def fig1(runs: Sequence[R.Run]) -> list:
    """Final test error per estimator, one bar per perturbation (CE-nudge, MSE-nudge, clamp),
    a panel per dataset; BP as dashed lines (one per cost)."""
    datasets = list(dict.fromkeys(r.config.get("dataset") for r in runs))
    fig = make_subplots(rows=1, cols=len(datasets) or 1, subplot_titles=datasets)
    colors = {"CE-nudge": "#1f77b4", "MSE-nudge": "#ff7f0e", "clamp": "#2ca02c"}
    for col, ds in enumerate(datasets, start=1):
        mine = [r for r in runs if r.config.get("dataset") == ds]
        ep = [r for r in mine if method(r) != "BP"]
        for pert, members in _groups(ep, _perturbation).items():
            stats = {s: _summary(_done(m)) for s, m in _groups(members, method).items()}
            fig.add_bar(x=list(stats), y=[None if v[0] is None else 100 * v[0]
                                          for v in stats.values()],
                        name=pert, legendgroup=pert, showlegend=col == 1,
                        marker_color=colors.get(pert), row=1, col=col)
        for cost, members in _groups([r for r in mine if method(r) == "BP"],
                                     lambda r: r.flat.get("cost")).items():
            mean = _summary(_done(members))[0]
            if mean is not None:
                fig.add_hline(y=100 * mean, line_dash="dash", row=1, col=col,
                              annotation_text=f"BP ({cost})")
    fig.update_layout(title="Fig. 1: perturbation × estimator (final test top-1 error, %)",
                      barmode="group", height=420, margin=MARGIN)
    return [fig]


def fig2(runs: Sequence[R.Run]) -> list:
    """Heat map of the final test error over β × K (mean over seeds)."""
    xs, ys, z = R.grid(runs, "beta", "iterations")
    fig = go.Figure(go.Heatmap(x=[str(x) for x in xs], y=[str(y) for y in ys],
                               z=[[None if v is None else 100 * v for v in row] for row in z],
                               colorscale="Viridis", colorbar=dict(title="error %"),
                               texttemplate="%{z:.1f}"))
    fig.update_layout(title="Fig. 2: final test top-1 error (%) over β × K", height=420,
                      xaxis_title="β", yaxis_title="K (iterations)", margin=MARGIN)
    rows = [[y] + [_pct(v) for v in row] for y, row in zip(ys, z)]
    return [fig, html_table(["K \\ β", *xs], rows, "final test top-1 error (%)")]


def _curves(runs: Sequence[R.Run], fields: Sequence[str], metrics: Sequence[str],
            title: str) -> go.Figure:
    """Mean curves (over seeds) per combination of ``fields``; EP solid, BP dashed."""
    fig = make_subplots(rows=1, cols=len(metrics), subplot_titles=list(metrics))
    for i, (key, members) in enumerate(_groups(runs, lambda r: (_label(r, fields),
                                                                method(r) == "BP")).items()):
        label, bp = key
        name = f"{label} ({method(members[0])})" if label else method(members[0])
        for col, metric in enumerate(metrics, start=1):
            epochs, values = mean_curve(members, metric)
            fig.add_scatter(x=epochs, y=values, mode="lines", name=name,
                            legendgroup=str(key), showlegend=col == 1,
                            line=dict(dash="dash" if bp else "solid", color=_color(i)),
                            row=1, col=col)
    fig.update_layout(title=title, height=420, margin=MARGIN)
    fig.update_xaxes(title_text="epoch")
    return fig


def _color(i: int) -> str:
    palette = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
               "#7f7f7f", "#bcbd22", "#17becf")
    return palette[i % len(palette)]


def fig3(runs: Sequence[R.Run]) -> list:
    """Test error curves for each output-layer gain, EP solid and BP dashed."""
    return [_curves(runs, ["model_args.output_gain"], ["test_top1_error", "test_top5_error"],
                    "Fig. 3: output-layer gain (EP solid, BP dashed)")]


def fig4(runs: Sequence[R.Run]) -> list:
    """Test error and training loss curves per batch size, EP solid and BP dashed."""
    return [_curves(runs, ["batch_size"], ["test_top1_error", "train_loss"],
                    "Fig. 4: batch size (EP solid, BP dashed)")]


def fig5(runs: Sequence[R.Run]) -> list:
    """Final test error over α × K, one heat map per order (sync / async); a run that
    stopped on a non-finite value shows as NaN, as in the paper."""
    out = []
    for order, members in _groups(runs, lambda r: r.flat.get("order")).items():
        xs, ys, z = R.grid(members, "step_size", "iterations")
        failed = {(R.value_label(r.flat.get("step_size")), R.value_label(r.flat.get(
            "iterations"))) for r in members if r.state.get("state") == "failed"}
        text = [["NaN" if (x, y) in failed and v is None else _pct(v) for x, v in zip(xs, row)]
                for y, row in zip(ys, z)]
        fig = go.Figure(go.Heatmap(x=[str(x) for x in xs], y=[str(y) for y in ys],
                                   z=[[None if v is None else 100 * v for v in row] for row in z],
                                   text=text, texttemplate="%{text}", colorscale="Viridis",
                                   colorbar=dict(title="error %")))
        fig.update_layout(title=f"Fig. 5 ({order}): final test top-1 error (%) over α × K",
                          xaxis_title="α (step size)", yaxis_title="K", height=380,
                          margin=MARGIN)
        out.append(fig)
    return out


def table1(runs: Sequence[R.Run]) -> list:
    """Mean ± sd over seeds of the final test errors per dataset × cost × algorithm, the
    paper's Table 1 beside (where the dataset is one of the paper's)."""
    rows = []
    key = (lambda r: (r.config.get("dataset"), r.flat.get("cost"), method(r)))
    for (ds, cost, alg), members in _groups(runs, key).items():
        paper = PAPER_TABLE1.get((ds, cost, "bp" if alg == "BP" else "ep"))
        ptxt = "–" if paper is None else _paper(*paper[:2]) + (
            f" / {_paper(*paper[2:])}" if paper[2] is not None else "")
        rows.append([ds, cost, alg if alg == "BP" else f"EP ({alg})", *_final(members), ptxt])
    return [html_table(["dataset", "cost", "algorithm", "finished", "top-1 % (ours)",
                        "top-5 % (ours)", "paper top-1 / top-5 %"], rows,
                       "Table 1: final test error, mean ± sd over seeds")]


def table2(runs: Sequence[R.Run]) -> list:
    """VGG10 / VGG10Skip: final top-1 / top-5 per estimator and BP with Table 2's numbers
    beside, and the test error curves (Fig. 9)."""
    rows = []
    for (model, alg), members in _groups(runs, lambda r: (r.config.get("model"),
                                                          method(r))).items():
        paper = PAPER_TABLE2.get((model, "bp" if alg == "BP" else alg))
        rows.append([model, alg, *_final(members),
                     "–" if paper is None else f"{paper[0]} / {paper[1]}"])
    table = html_table(["model", "algorithm", "finished", "top-1 % (ours)", "top-5 % (ours)",
                        "paper top-1 / top-5 %"], rows,
                       "Table 2 (and VGG10Skip, §5.5): final test error")
    return [table, _curves(runs, ["model"], ["test_top1_error", "test_top5_error"],
                           "Fig. 9: test error per epoch (EP solid, BP dashed)")]


def table3(runs: Sequence[R.Run]) -> list:
    """PGD against mod-PGD: mean ± sd over seeds of the final errors per dataset × rule (K),
    runs that stopped on a non-finite value counted, and the test error curves (Fig. 7)."""
    rows = []
    key = (lambda r: (r.config.get("dataset"), method(r) == "BP", r.flat.get("update"),
                      r.flat.get("iterations")))
    for (ds, bp, update, k), members in _groups(runs, key).items():
        diverged = sum(1 for r in members if r.state.get("state") == "failed")
        finished, top1, top5 = _final(members)
        rows.append([ds, "BP" if bp else f"{update} ({k})", finished, diverged, top1, top5])
    table = html_table(["dataset", "rule (K)", "finished", "failed / diverged", "top-1 %",
                        "top-5 %"], rows, "Table 3: PGD vs mod-PGD, final test error, "
                        "mean ± sd over seeds")
    return [table, _curves(runs, ["update", "iterations"], ["test_top1_error"],
                           "Fig. 7: test error per epoch (mean over seeds)")]


def by_model(runs: Sequence[R.Run]) -> list:
    """Models beyond the paper (resnet18, vit; docs/method.md §9): final top-1 / top-5, mean ±
    sd over seeds, per dataset × model × algorithm, and the test error curves."""
    rows = []
    key = (lambda r: (r.config.get("dataset"), r.config.get("model"), method(r)))
    for (ds, model, alg), members in _groups(runs, key).items():
        rows.append([ds, model, alg, *_final(members)])
    table = html_table(["dataset", "model", "algorithm", "finished", "top-1 %", "top-5 %"], rows,
                       "final test error, mean ± sd over seeds")
    return [table, _curves(runs, ["model"], ["test_top1_error"],
                           "test error per epoch (EP solid, BP dashed)")]


def layers_of(run: R.Run) -> Optional[int]:
    """The number of weight layers of a run's model: an mlp's hidden widths plus its output,
    VGG-n's n (None for other models)."""
    model, args = run.config.get("model"), run.config.get("model_args") or {}
    if model == "mlp":
        return len(args.get("widths", (512, 512))) + 1
    m = re.fullmatch(r"vgg(\d+)", model or "")
    return int(m.group(1)) if m else None


def depth(runs: Sequence[R.Run]) -> list:
    """Final test error against depth, one line per training method, for the mlps and the VGGs
    (mean over seeds), and the same numbers as a table."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("mlp", "VGG"))
    rows, methods = [], []
    key = (lambda r: ("VGG" if (r.config.get("model") or "").startswith("vgg") else "mlp",
                      method(r), layers_of(r)))
    groups = _groups(runs, key)
    for (family, alg, layers), members in sorted(groups.items(), key=lambda kv: (
            kv[0][0], kv[0][1], kv[0][2] or 0)):
        rows.append([family, layers, alg, *_final(members)[:2]])
        if alg not in methods:
            methods.append(alg)
    for i, alg in enumerate(methods):
        for col, family in enumerate(("mlp", "VGG"), start=1):
            points = sorted((layers, _summary(_done(ms))[0])
                            for (fam, a, layers), ms in groups.items()
                            if fam == family and a == alg and layers is not None)
            fig.add_scatter(x=[p[0] for p in points],
                            y=[None if p[1] is None else 100 * p[1] for p in points],
                            mode="lines+markers", name=alg, legendgroup=alg,
                            showlegend=col == 1, line=dict(color=_color(i)), row=1, col=col)
    fig.update_layout(title="final test error against depth (mean over seeds)", height=420,
                      margin=MARGIN)
    fig.update_xaxes(title_text="weight layers")
    fig.update_yaxes(title_text="top-1 error %")
    return [html_table(["family", "layers", "method", "finished", "top-1 %"], rows,
                       "final test error by depth and training method"), fig]


#: sweep name (without ``-small``) → (title, drawing function, what the paper reports)
EXPERIMENTS: dict[str, tuple[str, Callable, Optional[str]]] = {
    "fig1": ("Fig. 1: perturbation × estimator", fig1,
             "CE-nudge with the centered estimator is best; random and backward are close to "
             "centered; on ImageNet32 CE-nudge beats MSE-nudge and clamp except with forward."),
    "fig2": ("Fig. 2: β × K", fig2,
             "the final error is mostly insensitive to K and β for K ≥ 4 and "
             "2e-4 ≤ β ≤ 0.1 (VGG5, CIFAR-100, 20 epochs)."),
    "fig3": ("Fig. 3: output-layer gain", fig3,
             "gain 0.2 is much better than 1.0 with MSE on ImageNet32; EP tracks BP in both."),
    "fig4": ("Fig. 4: batch size", fig4,
             "the shape of the curves depends on the batch size, not on EP vs BP."),
    "fig5": ("Fig. 5: step size α × K × order", fig5,
             "asynchronous updates with α = 1 are best and the same for K = 5, 10, 20; some "
             "cells diverge (NaN)."),
    "table1": ("Table 1: cost function, EP vs BP", table1, None),
    "table2": ("Table 2, Fig. 9: VGG10 and VGG10Skip on ImageNet", table2, None),
    "table3": ("Table 3, Fig. 7: PGD vs mod-PGD", table3,
               "PGD with K = 10 performs on par with mod-PGD with K = 5; PGD with K = 5 "
               "diverged on CIFAR-10 near epoch 50 (every seed); mod-PGD is slightly but "
               "consistently better on CIFAR-100 and ImageNet32. The table's numbers are not "
               "in the text this workbench was built from."),
    "resnet18": ("Beyond the paper: ResNet-18 with BatchNorm (and a ViT), EP vs BP", by_model,
                 None),
    "depth": ("Beyond the paper: error against depth for BP, EP, IL and iPC", depth,
              "the paper sets EP against predictive coding's training in App. C; PC work "
              "(PCX, Qi et al. 2025) reports inference learning degrading with depth."),
}
