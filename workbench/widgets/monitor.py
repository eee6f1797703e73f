"""Training curves of a run, live or from its run folder."""
from __future__ import annotations

import ipywidgets as W
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..training.runfolder import METRICS, RunFolder
from .common import MARGIN, finite

__all__ = ["TrainingMonitor"]


class TrainingMonitor(W.VBox):
    """Curves of a training run, live: ``workbench.training.train.run(config, callback=monitor)``.

    Takes the rows of ``metrics.jsonl`` one by one (:meth:`__call__`). ``.figure`` has three
    panels: train and test loss per epoch; test top-1 and top-5 error per epoch; the probe's
    per-layer cosine between the EP estimate and the BP gradient, against the step. Build one
    from a finished (or running) run folder with :meth:`from_run`.
    """

    EPOCH = (("train_loss", "train loss", "x", "y"), ("test_loss", "test loss", "x", "y"),
             ("test_top1_error", "test top-1 error", "x2", "y2"),
             ("test_top5_error", "test top-5 error", "x2", "y2"))

    def __init__(self):
        fig = make_subplots(rows=1, cols=3, subplot_titles=(
            "loss", "test error", "probe: cosine(EP, BP) per layer"))
        fig.update_xaxes(title_text="epoch", row=1, col=1)
        fig.update_xaxes(title_text="epoch", row=1, col=2)
        fig.update_xaxes(title_text="step", row=1, col=3)
        fig.update_layout(height=330, margin=MARGIN)
        for key, name, xa, ya in self.EPOCH:
            fig.add_scatter(x=[], y=[], name=name, mode="lines+markers", xaxis=xa, yaxis=ya)
        self.figure = go.FigureWidget(fig)
        self.status = W.HTML("waiting for the first row of metrics")
        self.rows: list[dict] = []
        super().__init__([self.status, self.figure])

    @classmethod
    def from_run(cls, run_dir: str) -> "TrainingMonitor":
        """A monitor holding every row of ``run_dir/metrics.jsonl``."""
        folder = RunFolder(run_dir, writer=False)
        if not folder.file(METRICS).is_file():
            raise ValueError(f"{folder.file(METRICS)} does not exist: {run_dir} is not a "
                             f"training run folder")
        monitor = cls()
        for row in folder.rows():
            monitor(row)
        return monitor

    def __call__(self, row: dict) -> None:
        self.rows.append(row)
        kind = row.get("type")
        if kind == "epoch":
            with self.figure.batch_update():
                for trace, (key, *_) in zip(self.figure.data, self.EPOCH):
                    trace.x = (*trace.x, row["epoch"])
                    trace.y = (*trace.y, *finite([row.get(key)]))
            self.status.value = (
                f"epoch {row['epoch']}, step {row['step']}: train loss {row['train_loss']:.4f}, "
                f"test top-1 error {row['test_top1_error']:.4f}, "
                f"{row['images_per_second']:.0f} images/s")
        elif kind == "probe":
            probes = [t for t in self.figure.data if t.xaxis == "x3"]
            if not probes:
                self.figure.add_traces([
                    go.Scatter(x=[], y=[], name=f"layer {k + 1}", mode="lines+markers",
                               xaxis="x3", yaxis="y3") for k in range(len(row["cosine"]))])
                probes = [t for t in self.figure.data if t.xaxis == "x3"]
            with self.figure.batch_update():
                for trace, c in zip(probes, finite(row["cosine"])):
                    trace.x = (*trace.x, row["step"])
                    trace.y = (*trace.y, c)
