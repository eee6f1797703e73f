"""Every notebook executes under papermill with small parameters; committed notebooks are clean.

The kernel is this venv's ``python3`` kernelspec (``JUPYTER_PATH`` puts it first, as the Makefile
does), one thread per kernel; executed copies and run folders go to pytest's temporary folder.
"""
import json
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import papermill
import pytest

from workbench import data
from workbench.training import presets

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
ALL = sorted(NOTEBOOKS.glob("*.ipynb"))


def real_or_synthetic() -> str:
    """Fashion-MNIST where it is installed (CI installs it), else the synthetic dataset."""
    try:
        data.build("fashion-mnist", "test", download=False)
    except data.DatasetNotFoundError:
        return "synthetic"
    return "fashion-mnist"


@pytest.fixture
def execute(tmp_path, monkeypatch):
    """``execute(name, **parameters)`` runs a notebook with papermill and returns its text
    outputs (papermill raises if any cell fails, which includes the notebooks' own asserts)."""
    monkeypatch.setenv("JUPYTER_PATH", str(Path(sys.prefix, "share", "jupyter")))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("WORKBENCH_DATA", raising=False)

    def run(name: str, out: str = None, **parameters) -> str:
        path = tmp_path / (out or name)
        papermill.execute_notebook(str(NOTEBOOKS / name), str(path), parameters=parameters,
                                   kernel_name="python3", progress_bar=False, cwd=str(tmp_path))
        nb = nbformat.read(path, as_version=4)
        return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                       for o in c.outputs) + json.dumps([o.get("data", {}) for c in nb.cells
                                                         if c.cell_type == "code"
                                                         for o in c.outputs])
    return run


def test_committed_notebooks_are_stripped_and_parameterised():
    """oracle: nbstripout --verify (what `make check-notebooks` runs) and the notebook format:
    no outputs, no execution counts, exactly one `parameters` cell, the python3 kernel."""
    assert [p.name for p in ALL] == ["00_ep_tutorial.ipynb", "01_equilibration_dynamics.ipynb",
                                     "02_gradient_bias.ipynb", "03_train.ipynb",
                                     "04_imagenet_vgg10.ipynb", "05_compare_runs.ipynb",
                                     "06_paper_results.ipynb", "07_your_model.ipynb"]
    nbstripout = Path(sys.prefix, "bin", "nbstripout")
    verify = subprocess.run([str(nbstripout), "--verify", *map(str, ALL)], capture_output=True,
                            text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    for path in ALL:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(not c.outputs and c.execution_count is None for c in code), path.name
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1 and tagged[0] is code[0], path.name
        assert nb.metadata.kernelspec.name == "python3", path.name


@pytest.mark.slow
def test_tutorial_executes_and_shows_first_and_second_order_bias(execute):
    """oracle: the notebook's own asserts (hand-written nudged phase == engine trace; autograd
    (1/β)∂F/∂θ == engine estimate) and docs/method.md §3 (one-sided slope 1, centered slope 2)."""
    text = execute("00_ep_tutorial.ipynb", dataset=real_or_synthetic(), batch_size=8)
    assert "equals the engine's forward estimate for every parameter" in text
    slopes = dict(re.findall(r"(\w+): slope ([\d.]+) for", text))
    assert float(slopes["forward"]) == pytest.approx(1.0, abs=0.1)
    assert float(slopes["backward"]) == pytest.approx(1.0, abs=0.1)
    assert float(slopes["centered"]) == pytest.approx(2.0, abs=0.1)


@pytest.mark.slow
def test_equilibration_notebook_executes(execute):
    """oracle: the explorer's settings come from the parameters (K iterations per phase, both
    phases of centered) and the widget view is in the output."""
    text = execute("01_equilibration_dynamics.ipynb", dataset=real_or_synthetic(), pool=16,
                   batch_size=8, iterations=4)
    assert "phase β = +0.05: 4 iterations" in text and "phase β = -0.05: 4 iterations" in text
    assert "application/vnd.jupyter.widget-view+json" in text


@pytest.mark.slow
def test_train_notebook_writes_a_run_that_the_bias_notebook_reads(execute, tmp_path):
    """oracle: the run folder the training loop writes (summary.json, one metrics row per
    epoch) and the same folder opened as a checkpoint by 02."""
    run_dir = tmp_path / "run"
    text = execute("03_train.ipynb", dataset="synthetic", image_size=8, widths=[16], epochs=2,
                   batch_size=32, limit_train=64, limit_test=32, probe_every=2, device="cpu",
                   run_dir=str(run_dir))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs"] == 2
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows if r["type"] == "epoch"] == [1, 2]
    assert f"test top-1 error {summary['test_top1_error']:.4f}" in text
    text = execute("02_gradient_bias.ipynb", checkpoint=str(run_dir), batch_size=8,
                   betas=[1e-3, 1e-2], iterations_sweep=[1, 5])
    assert f"mlp ({run_dir})" in text
    assert re.search(r"centered +-?[\d.]+ +[\d.]+e-\d+ +[\d.]+e-\d+", text)


@pytest.mark.slow
def test_imagenet_notebook_runs_the_recipe_and_resumes(execute, tmp_path):
    """oracle: resume == no repeated work — the second execution on the same run_dir resumes
    from the final checkpoint and leaves metrics.jsonl and the summary's step count as they were."""
    run_dir = tmp_path / "imagenet-run"
    recipe = dict(presets.PRESETS["vgg10-imagenet"], dataset="synthetic", image_size=32,
                  iterations=2, model_args={"channels": [4] * 8, "dense": 16}, epochs=1,
                  batch_size=8)
    small = dict(preset=None, overrides=recipe, data_root=None, limit_train=16, limit_test=16,
                 checkpoint_every=1, probe_every=1, workers=0, device="cpu",
                 run_dir=str(run_dir))
    first = execute("04_imagenet_vgg10.ipynb", out="first.ipynb", **small)
    assert f"starting a new run in {run_dir}" in first
    metrics = (run_dir / "metrics.jsonl").read_text()
    config = json.loads((run_dir / "config.json").read_text())
    assert (config["model"], config["estimator"]["beta"], config["lr"], config["weight_decay"],
            config["min_lr"], config["nesterov"], config["schedule"]) == \
        ("vgg10", 0.05, 0.02, 2e-4, 2e-6, True, "epoch")
    second = execute("04_imagenet_vgg10.ipynb", out="second.ipynb", **small)
    assert f"resuming the run in {run_dir}" in second
    assert (run_dir / "metrics.jsonl").read_text() == metrics
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 2


@pytest.mark.slow
def test_your_model_notebook_checks_ep_against_bp_and_trains_the_blocks(execute, tmp_path):
    """oracles: the notebook's own assert (per-layer cosine of EP with BP > 0.999 in float64)
    and the run folder the training loop writes for the registered model (its config names
    it; BatchNorm running statistics in the checkpoint moved away from their initial values)."""
    import torch
    run_dir = tmp_path / "run"
    text = execute("07_your_model.ipynb", dataset=real_or_synthetic(), check_batch=4,
                   iterations=3, batch_size=16, limit_train=64, limit_test=32,
                   run_dir=str(run_dir))
    assert "centered EP, β = 1e-05, K = 60, float64" in text and "Attention   identity" in text
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["config"]["model"] == "your-model"
    assert summary["config"]["estimator"]["precision"] == "strict"
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"]
    assert float(state["layers.0.1.running_mean"].abs().max()) > 0
    assert f"test top-1 error {summary['test_top1_error']:.4f}" in text


@pytest.fixture(scope="module")
def small_sweeps(tmp_path_factory) -> Path:
    """experiments/fig2-small and table3-small, finished, cut down further with --set (64
    training images, one epoch) and run in this process; plus one point of table3-small left
    pending (its run folder removed) to show an unfinished run."""
    from conftest import write_mnist

    from workbench.experiments import sweep as sw
    root = tmp_path_factory.mktemp("sweeps")
    write_mnist(root / "data" / "fashion-mnist", n_train=64, n_test=32)
    settings = {"data_root": str(root / "data"), "download": False, "limit_train": 64,
                "limit_test": 32, "epochs": 1, "probe_every": 0, "device": "cpu",
                "tensorboard": False}
    experiments = NOTEBOOKS.parent / "experiments"
    for name in ("fig2-small", "table3-small"):
        s = sw.load(experiments / f"{name}.yaml", out=root / "out", settings=settings)
        sw.write_plan(s)
        for p in s.points[:-1] if name == "table3-small" else s.points:
            sw.run_point(s.folder, p.name)
    return root / "out"


@pytest.mark.slow
def test_compare_runs_notebook_on_a_finished_sweep(execute, small_sweeps):
    """oracle: workbench.experiments.runs on the same folder — the notebook prints one aggregate line per
    (beta, K) pair of fig2-small and the pending point of table3-small as unfinished."""
    from workbench.experiments import runs as R
    text = execute("05_compare_runs.ipynb", paths=[str(small_sweeps / "fig2-small")])
    runs = R.find_runs(small_sweeps / "fig2-small")
    assert f"{len(runs)} runs; fields that differ: beta, iterations" in text
    for row in R.aggregate(runs, ["beta", "iterations"]):
        assert f"beta={row['beta']}, iterations={row['iterations']}: test_top1_error " \
               f"{row['mean']:.4f}" in text
    text = execute("05_compare_runs.ipynb", out="05b.ipynb",
                   paths=[str(small_sweeps / "table3-small")])
    assert "unfinished: scheme=bp,seed=2  pending  0/1 epochs" in text


@pytest.mark.slow
def test_paper_results_notebook_draws_the_small_sweeps(execute, small_sweeps):
    """oracle: workbench.experiments.results on the same runs — Fig. 2's table and Table 3's rows are in
    the executed notebook; sweeps not run are listed with their command."""
    from workbench.experiments import results
    from workbench.experiments import runs as R
    text = execute("06_paper_results.ipynb", root=str(small_sweeps), suffix="-small")
    assert "drawn: fig2, table3" in text
    assert "Not run yet: `workbench sweep experiments/fig1-small.yaml" in text
    fig2_table = results.fig2(R.find_runs(small_sweeps / "fig2-small"))[1]
    assert json.dumps(fig2_table)[1:-1] in text
    assert "mod_pgd (5)</td><td>3/3" in text and "BP</td><td>2/3" in text
