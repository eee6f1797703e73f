"""Reading runs back (workbench.experiments.runs), the RunsBrowser widget and the paper's tables
(workbench.experiments.results), on run folders written by hand with known numbers."""
from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from workbench.experiments import results
from workbench.experiments import runs as R
from workbench.training.config import as_run, record


def _run(folder: Path, errors: list[float], state: str = "done", previous: bool = False,
         **fields) -> Path:
    """A run folder as the trainer writes it: config.json, epoch rows, summary.json
    (``previous``: config.json as the version before this one wrote it — backprop and iPC by
    ``algorithm``, the run options beside the fields)."""
    folder.mkdir(parents=True)
    cfg = record(*as_run({"dataset": "synthetic", "model": "mlp", "epochs": 3,
                          "run_dir": str(folder), **fields}))
    if previous:
        cfg.update(cfg.pop("run"))
        scheme = cfg["estimator"]["scheme"]
        cfg["algorithm"] = "ipc" if cfg.pop("incremental") else ("bp" if scheme == "bp" else "ep")
        if scheme == "bp":
            cfg["estimator"]["scheme"] = "centered"
    (folder / "config.json").write_text(json.dumps(cfg))
    rows = [{"type": "epoch", "epoch": i + 1, "step": 10 * (i + 1), "test_top1_error": e,
             "test_top5_error": e / 10, "train_loss": 1.0 - 0.1 * i, "test_loss": 1.0}
            for i, e in enumerate(errors)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if state == "done":
        (folder / "summary.json").write_text(json.dumps({"status": "completed"}))
    elif state == "failed":
        (folder / "summary.json").write_text(json.dumps({"status": "non_finite",
                                                         "message": "the loss is nan"}))
    return folder


@pytest.fixture
def grid_runs(tmp_path) -> Path:
    """A 2 × 2 grid of beta × iterations with 2 seeds, one run unfinished, one failed."""
    root = tmp_path / "runs"
    k = 0
    for beta in (0.01, 0.1):
        for it in (2, 5):
            for seed in (0, 1):
                k += 1
                state = "started" if (beta, it, seed) == (0.1, 5, 1) else \
                    "failed" if (beta, it, seed) == (0.01, 5, 1) else "done"
                errors = [0.5, 0.4, 0.3 + k / 100][:2 if state == "started" else 3]
                _run(root / f"b{beta}-k{it}-s{seed}", errors, state, beta=beta,
                     iterations=it, seed=seed)
    return root


def test_find_state_differing_aggregate_grid(grid_runs):
    """oracle: the numbers written into the folders, averaged by statistics.fmean/stdev by
    hand; unfinished and failed runs are counted but not averaged."""
    runs = R.find_runs(grid_runs)
    assert len(runs) == 8
    states = {r.name: r.state["state"] for r in runs}
    assert states["b0.1-k5-s1"] == "started" and states["b0.01-k5-s1"] == "failed"
    assert R.find_runs(grid_runs)[0].state["epochs"] == 3
    assert [r.progress for r in runs if r.name == "b0.1-k5-s1"] == ["2/3"]
    assert R.differing(runs) == ["beta", "iterations", "seed"]
    pending = R.Run(grid_runs / "not-yet", "not-yet", {**runs[0].config, "estimator": {
        **runs[0].config["estimator"], "precision": "auto", "fused": None}})
    assert R.differing(runs + [pending]) == ["beta", "iterations", "seed"]   # auto: unresolved
    agg = {(a["beta"], a["iterations"]): a for a in R.aggregate(runs, ["beta", "iterations"])}
    assert agg[("0.01", "2")]["mean"] == pytest.approx(statistics.fmean([0.31, 0.32]))
    assert agg[("0.01", "2")]["sd"] == pytest.approx(statistics.stdev([0.31, 0.32]))
    assert agg[("0.01", "5")]["n"] == 1 and agg[("0.01", "5")]["mean"] == pytest.approx(0.33)
    assert agg[("0.1", "5")]["n"] == 1 and agg[("0.1", "5")]["runs"] == 2
    xs, ys, z = R.grid(runs, "beta", "iterations")
    assert xs == ["0.01", "0.1"] and ys == ["2", "5"]
    assert z[0][1] == pytest.approx(statistics.fmean([0.35, 0.36]))
    assert min(r.best() for r in runs) == pytest.approx(0.31)


def test_runs_browser_table_curves_and_heat_map(grid_runs, tmp_path):
    """oracle: the folders above — the table has exactly the differing fields as columns, a
    curve per run with epochs, a heat map over the two non-seed fields equal to runs.grid;
    refresh() picks up a run that finished since."""
    from workbench.widgets import RunsBrowser
    b = RunsBrowser(grid_runs)
    head = b.table.value.split("</thead>")[0]
    for col in ("seed", "beta", "iterations", "final top-1 %"):
        assert f"<th>{col}</th>" in head
    assert "<th>lr</th>" not in head and "<th>scheme</th>" not in head
    assert len(b.curves.data) == 8
    assert (b.heat_x.value, b.heat_y.value) == ("beta", "iterations")
    _, _, z = R.grid(b.runs, "beta", "iterations")
    assert [list(row) for row in b.heatmap.data[0].z] == z
    assert "1 started" in b.status.value and "1 failed" in b.status.value
    unfinished = grid_runs / "b0.1-k5-s1"
    (unfinished / "summary.json").write_text(json.dumps({"status": "completed"}))
    b.refresh()
    assert "1 started" not in b.status.value
    with pytest.raises(ValueError, match="no sweep folders"):
        RunsBrowser(root=tmp_path / "empty")
    with pytest.raises(ValueError, match="metric must be one of"):
        RunsBrowser(grid_runs, metric="accuracy")


def test_table1_puts_the_papers_numbers_beside_ours(tmp_path):
    """oracle: Table 1 of the paper (presets.PAPER_TABLE1) and the errors written by hand."""
    for seed, err in ((0, 0.070), (1, 0.080)):
        _run(tmp_path / f"ep{seed}", [0.1, err], dataset="cifar10", cost="mse", seed=seed)
    _run(tmp_path / "bp0", [0.09], dataset="cifar10", cost="mse", scheme="bp")
    runs = R.find_runs(tmp_path)
    html = results.table1(runs)[0]
    assert "<td>cifar10</td><td>mse</td><td>EP (centered)</td><td>2/2</td><td>7.50 ± 0.71</td>" \
        in html
    assert "<td>7.8 ± 0.1</td>" in html and "<td>8.0 ± 0.0</td>" in html


def test_table3_rows_and_curves_name_bp_without_estimator_fields(tmp_path):
    """oracle: the errors written by hand — one row per rule (K) with its mean, a diverged run
    counted as failed; BP's curve is named BP (its estimator fields are unused)."""
    _run(tmp_path / "m0", [0.2, 0.10], update="mod_pgd", iterations=5, seed=0)
    _run(tmp_path / "m1", [0.2, 0.12], update="mod_pgd", iterations=5, seed=1)
    _run(tmp_path / "p0", [0.3], "failed", update="pgd", iterations=5, seed=0)
    _run(tmp_path / "b0", [0.2, 0.09], scheme="bp", update="mod_pgd", iterations=5)
    table, fig = results.table3(R.find_runs(tmp_path))
    assert "<td>mod_pgd (5)</td><td>2/2</td><td>0</td><td>11.00 ± 1.41</td>" in table
    assert "<td>pgd (5)</td><td>0/1</td><td>1</td><td>–</td>" in table
    assert sorted(t.name for t in fig.data) == ["BP", "update=mod_pgd, iterations=5 (centered)",
                                                "update=pgd, iterations=5 (centered)"]


def test_depth_rows_and_lines_per_method_and_family(tmp_path):
    """oracle: the errors written by hand — one row per (family, weight layers, method) with
    its mean over seeds; an mlp's layers are its hidden widths plus the output, VGG-n's n; IL
    (scheme il) and iPC (incremental) are named apart from EP and BP, in folders of this
    version and of the previous one (``algorithm: bp | ipc``); a diverged run counts as
    unfinished and leaves its point out of the line."""
    _run(tmp_path / "bp3", [0.3, 0.20], previous=True, scheme="bp",
         model_args={"widths": [8, 8]})
    _run(tmp_path / "il3a", [0.3, 0.24], scheme="il", model_args={"widths": [8, 8]}, seed=0)
    _run(tmp_path / "il3b", [0.3, 0.26], scheme="il", model_args={"widths": [8, 8]}, seed=1)
    _run(tmp_path / "il6", [0.5, 0.40], scheme="il", model_args={"widths": [8] * 5})
    _run(tmp_path / "ipc6", [0.9], "failed", previous=True, incremental=True, scheme="il",
         model_args={"widths": [8] * 5})
    _run(tmp_path / "ep5", [0.3, 0.22], dataset="cifar10", model="vgg5")
    table, fig = results.depth(R.find_runs(tmp_path))
    assert "<td>mlp</td><td>3</td><td>IL</td><td>2/2</td><td>25.00 ± 1.41</td>" in table
    assert "<td>mlp</td><td>3</td><td>BP</td><td>1/1</td><td>20.00</td>" in table
    assert "<td>mlp</td><td>6</td><td>iPC</td><td>0/1</td><td>–</td>" in table
    assert "<td>VGG</td><td>5</td><td>centered</td><td>1/1</td><td>22.00</td>" in table
    lines = {(t.name, t.xaxis): (list(t.x), list(t.y)) for t in fig.data}
    assert lines[("IL", "x")] == ([3, 6], [pytest.approx(25.0), pytest.approx(40.0)])
    assert lines[("iPC", "x")] == ([6], [None])
    assert lines[("centered", "x2")] == ([5], [pytest.approx(22.0)])
