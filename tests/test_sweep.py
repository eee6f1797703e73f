"""``workbench sweep``: the file's checks, the plan, idempotence, kill and resume, failures, the
Slurm launcher through submitit (its local executor, and the sbatch file it writes)."""
from __future__ import annotations

import itertools
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import write_mnist

from workbench.experiments import sweep as sw
from workbench.training import runfolder
from workbench.training.config import as_run

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "WORKBENCH_DATA": ""}
ROOT = Path(__file__).resolve().parent.parent
TIMING = {"images_per_second", "seconds"}


def _base(data: Path, **extra) -> dict:
    return {"dataset": "fashion-mnist", "data_root": str(data), "download": False,
            "model": "mlp", "model_args": {"widths": [32]}, "epochs": 2, "batch_size": 16,
            "lr": 0.02, "iterations": 2, "probe_every": 5, "device": "cpu", **extra}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_mnist(root / "fashion-mnist", n_train=256, n_test=48)
    return root


def _write(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _sweep(*args, cwd=ROOT, timeout=300, **kw):
    return subprocess.run([sys.executable, "-m", "workbench", "sweep", *map(str, args)],
                          env=ENV, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          **kw)


def _lines(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in open(run_dir / "metrics.jsonl")]


# ---------------------------------------------------------------------------------------------
# the file
# ---------------------------------------------------------------------------------------------
def test_points_are_the_grid_times_the_seeds_plus_the_points(tmp_path, data):
    """oracle: itertools.product over the axes written out by hand, and the config each point
    must have (TrainConfig and RunOptions built directly)."""
    spec = {"name": "s", "base": _base(data), "grid": {
        "beta": ["1e-4", 0.1], "nudge": [{"cost": "mse"}, {"perturbation": "clamp"}]},
        "points": [{"scheme": "bp"}], "seeds": [3, 4]}
    s = sw.load(_write(tmp_path / "s.yaml", spec), out=tmp_path / "out")
    want = [dict(beta=b, **n, seed=seed) for b, n in itertools.product(
        [1e-4, 0.1], [{"cost": "mse"}, {"perturbation": "clamp"}]) for seed in (3, 4)]
    want += [{"scheme": "bp", "seed": 3}, {"scheme": "bp", "seed": 4}]
    assert [p.overrides for p in s.points] == want
    assert s.points[0].name == "beta=0.0001,cost=mse,seed=3"
    for p in s.points:
        direct = as_run({**_base(data), **p.overrides,
                         "run_dir": str(tmp_path / "out" / "s" / p.name)})
        assert (p.config, p.options) == direct
    assert not (tmp_path / "out").exists(), "loading a sweep writes nothing"


def test_yaml_exponents_are_floats_and_dict_fields_merge(tmp_path, data):
    """oracle: PyYAML alone reads 1e-4 as a string; the sweep file reads it as 0.0001; a
    point's model_args keep the base's other keys."""
    assert yaml.safe_load("b: 1e-4")["b"] == "1e-4"
    spec = {"base": _base(data), "grid": {"beta": [1e-4]},
            "points": [{"model_args": {"output_gain": 0.2}}]}
    text = yaml.safe_dump(spec).replace("0.0001", "1e-4")
    assert "1e-4" in text
    s = sw.load(tmp_path / "x.yaml", out=tmp_path, text=text)
    assert s.points[0].config.estimator.beta == 1e-4
    assert s.points[1].config.model_args == {"widths": [32], "output_gain": 0.2}
    assert s.points[1].name == "model_args.output_gain=0.2,seed=0"


BAD = [
    ({"bogus": 1}, ["unknown keys ['bogus']"]),
    ({"base": {"betta": 0.1}}, ["base", "unknown field 'betta'"]),
    ({"grid": {"lrr": [0.1]}}, ["grid axis 'lrr'", "not a config field"]),
    ({"grid": {"beta": []}}, ["grid axis 'beta'", "non-empty list"]),
    ({"grid": {"beta": [0.1, -1.0]}}, ["point 'beta=-1.0,seed=0'", "beta must be > 0"]),
    ({"grid": {"scheme": ["centered", "sideways"]}},
     ["point 'scheme=sideways,seed=0'", "unknown scheme 'sideways'"]),
    ({"grid": {"epochs": [2, 0]}}, ["point 'epochs=0,seed=0'", "epochs must be >= 1"]),
    ({"grid": {"nudge": [{"cost": "hinge"}]}}, ["point 'cost=hinge,seed=0'", "hinge"]),
    ({"grid": {"nudge": [{"cots": "mse"}]}}, ["grid axis 'nudge'", "unknown field 'cots'"]),
    ({"points": [{"run_dir": "x"}]}, ["points[0]", "'run_dir'", "manages itself"]),
    ({"points": [{"algorithm": "bp"}]}, ["points[0]", "no field 'algorithm' any more",
                                         "scheme 'bp'"]),
    ({"base": {"seed": 1}}, ["'seed'", "seeds: [...]"]),
    ({"grid": {"beta": [0.1]}, "points": [{"beta": 0.1}]}, ["point 'beta=0.1,seed=0'",
                                                            "appears twice"]),
    ({"seeds": []}, ["seeds must be a non-empty list"]),
    ({"seeds": [0, 0]}, ["repeat a seed"]),
    ({"grid": {"beta": 0.1}}, ["grid axis 'beta'", "non-empty list"]),
]


@pytest.mark.parametrize("spec,words", BAD, ids=[w[0][:30] for _, w in BAD])
def test_a_bad_sweep_file_is_rejected_before_anything_runs(tmp_path, data, spec, words):
    """oracle: the message names the field and the point; the command exits 2 and neither the
    sweep folder nor any run folder exists afterwards."""
    spec = {**spec, "base": {**_base(data), **spec.get("base", {})}}
    f = _write(tmp_path / "bad.yaml", spec)
    with pytest.raises(sw.SweepError) as e:
        sw.load(f, out=tmp_path / "out")
    for w in words:
        assert w in str(e.value), (w, str(e.value))
    r = _sweep(f, "--out", tmp_path / "out")
    assert r.returncode == 2 and words[-1] in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()


def test_not_yaml_is_rejected(tmp_path):
    """oracle: a YAML syntax error is a SweepError naming the file, not a traceback."""
    f = tmp_path / "broken.yaml"
    f.write_text("base: {epochs: [1,\n")
    with pytest.raises(sw.SweepError, match="broken.yaml: not valid YAML"):
        sw.load(f)


# ---------------------------------------------------------------------------------------------
# running: idempotent, resumable, failures reported
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_sweep_runs_once_resumes_after_sigkill_and_reports_failures(tmp_path, data):
    """oracles: (1) an uninterrupted sweep, (2) the same sweep whose launcher and children were
    SIGKILLed mid-run, then started again: equal metrics lines (timings aside) for every point;
    (3) a second call starts no process and rewrites no file; (4) a point that fails (its data
    is missing) is reported with its error and the exit status 1, and not retried unless
    asked; (5) the dry run lists the states."""
    spec = {"name": "k", "base": _base(data, checkpoint_every=4, epochs=3),
            "grid": {"scheme": ["centered", "random"]},
            "points": [{"dataset": "cifar10", "model_args": {"widths": [8]}}]}
    f = _write(tmp_path / "k.yaml", spec)
    a, b = tmp_path / "a", tmp_path / "b"
    ra = _sweep(f, "--out", a)
    assert ra.returncode == 1, ra.stdout + ra.stderr                 # the cifar10 point fails
    assert "2 done, 1 failed" in ra.stdout and "cifar" in ra.stdout.lower()

    proc = subprocess.Popen([sys.executable, "-m", "workbench", "sweep", str(f), "--out", str(b)],
                            env=ENV, cwd=ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = b / "k" / "scheme=centered,seed=0"
    deadline = time.monotonic() + 120
    while not (first / "checkpoint.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (first / "summary.json").exists(), "not killed mid-run"
    dry = _sweep(f, "--out", b, "--dry-run")
    assert "started" in dry.stdout and "pending" in dry.stdout, dry.stdout
    rb = _sweep(f, "--out", b)
    assert rb.returncode == 1 and "2 done, 1 failed" in rb.stdout, rb.stdout + rb.stderr
    for name in ("scheme=centered,seed=0", "scheme=random,seed=0"):
        assert _lines(b / "k" / name) == _lines(a / "k" / name), name

    stamps = {p: p.stat().st_mtime_ns for p in (b / "k").rglob("*") if p.is_file()}
    again = _sweep(f, "--out", b)
    assert "0 to run" in again.stdout and again.returncode == 1
    assert "start " not in again.stdout
    after = {p: p.stat().st_mtime_ns for p in (b / "k").rglob("*") if p.is_file()
             and p.name not in ("plan.json", "sweep.yaml")}
    assert after == {p: t for p, t in stamps.items() if p in after}
    failed = b / "k" / "dataset=cifar10,model_args.widths=[8],seed=0"
    assert "DatasetNotFoundError" in (failed / runfolder.ERROR).read_text()
    retry = _sweep(f, "--out", b, "--retry-failed")
    assert "1 to run" in retry.stdout


def test_local_launcher_gives_each_point_one_visible_gpu(tmp_path, data):
    """oracle: what each child process saw, from its own log line — with
    CUDA_VISIBLE_DEVICES=3,5 the launcher runs two slots, one per GPU, and every child sees
    exactly one of them (on this CPU machine the runs themselves fall back to the CPU)."""
    spec = {"name": "g", "base": _base(data, epochs=1, probe_every=0, device="auto"),
            "grid": {"beta": [0.01, 0.02, 0.05]}}
    f = _write(tmp_path / "g.yaml", spec)
    r = subprocess.run([sys.executable, "-m", "workbench", "sweep", str(f), "--out",
                        str(tmp_path)], env={**ENV, "CUDA_VISIBLE_DEVICES": "3,5"}, cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 slot(s) (GPUs 3,5)" in r.stdout
    seen = []
    for p in sorted((tmp_path / "g").glob("beta=*")):
        log = (p / sw.LOG_FILE).read_text()
        seen.append(re.search(r"CUDA_VISIBLE_DEVICES=([^,]*),", log).group(1))
    assert sorted(set(seen)) == ["3", "5"] and len(seen) == 3, seen


@pytest.mark.slow
def test_gpus_per_point_makes_each_point_one_torchrun_on_a_group_of_gpus(tmp_path, data):
    """oracles: each child's own log lines and the one-process run — with
    CUDA_VISIBLE_DEVICES=0,1,2,3 and --gpus-per-point 2, two points run at once, each a
    torchrun of two processes seeing one group ("0,1" or "2,3"); each point's summary says 2
    processes, and its metrics equal a one-process run of it up to float reduction order (here
    on the CPU: gloo). Too few GPUs is refused before anything runs."""
    spec = {"name": "gp", "base": _base(data, epochs=1, probe_every=4, device="auto"),
            "grid": {"beta": [0.02, 0.05]}}
    f = _write(tmp_path / "gp.yaml", spec)
    r = subprocess.run([sys.executable, "-m", "workbench", "sweep", str(f), "--out",
                        str(tmp_path), "--gpus-per-point", "2"],
                       env={**ENV, "CUDA_VISIBLE_DEVICES": "0,1,2,3"}, cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 slot(s) (GPUs 0,1,2,3)" in r.stdout
    s = sw.load(f, out=tmp_path)
    here = sw.load(_write(tmp_path / "here.yaml", {**spec, "name": "here"}), out=tmp_path)
    sw.write_plan(here)
    groups = []
    for p, q in zip(s.points, here.points):
        log = (p.folder / sw.LOG_FILE).read_text()
        seen = set(re.findall(r"CUDA_VISIBLE_DEVICES=([\d,]*), OMP", log))
        assert len(re.findall(r"workbench sweep: point", log)) == 2 and len(seen) == 1, log
        groups += seen
        assert json.loads((p.folder / "summary.json").read_text())["hardware"]["processes"] == 2
        sw.run_point(here.folder, q.name)
        for r2, r1 in zip(_lines(p.folder), _lines(q.folder)):
            assert (r2["type"], r2["step"]) == (r1["type"], r1["step"])
            if r1["type"] == "epoch":
                assert r2["train_loss"] == pytest.approx(r1["train_loss"], rel=1e-5)
    assert sorted(groups) == ["0,1", "2,3"]
    bad = subprocess.run([sys.executable, "-m", "workbench", "sweep", str(f), "--out",
                          str(tmp_path / "bad"), "--gpus-per-point", "3"],
                         env={**ENV, "CUDA_VISIBLE_DEVICES": "0,1"}, cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--gpus-per-point 3: only 2 GPU(s) visible" in bad.stderr


def test_a_changed_sweep_file_does_not_reuse_old_runs(tmp_path, data):
    """oracle: a point whose run folder holds another config is refused, naming the point and
    the field that changed (a finished run is never reported as this config's result)."""
    spec = {"name": "c", "base": _base(data, epochs=1), "grid": {"beta": [0.1]}}
    f = _write(tmp_path / "c.yaml", spec)
    s = sw.load(f, out=tmp_path)
    p = s.points[0]
    p.folder.mkdir(parents=True)
    (p.folder / "config.json").write_text(json.dumps({**p.config.to_dict(), "lr": 0.5}))
    with pytest.raises(sw.SweepError, match=r"point 'beta=0.1,seed=0'.*another config"
                       r"(.|\n)*lr: 0.5 → 0.02"):
        sw.load(f, out=tmp_path)


def test_run_point_in_process_writes_its_error_and_the_state_says_failed(tmp_path, data):
    """oracle: the point's state is read back from its folder: pending, then failed with the
    exception's message (and its error file), then done once the cause is gone."""
    spec = {"name": "e", "base": _base(data, epochs=1, probe_every=0),
            "points": [{"dataset": "mnist", "data_root": str(tmp_path / "nowhere")}]}
    f = _write(tmp_path / "e.yaml", spec)
    s = sw.load(f, out=tmp_path)
    sw.write_plan(s)
    p = s.points[0]
    assert sw.point_state(p)["state"] == "pending"
    with pytest.raises(Exception, match="mnist"):
        sw.run_point(s.folder, p.name)
    state = sw.point_state(p)
    assert state["state"] == "failed" and "mnist" in state["error"]
    assert "DatasetNotFoundError" in (p.folder / runfolder.ERROR).read_text()
    write_mnist(tmp_path / "nowhere" / "MNIST" / "raw", n_train=64, n_test=16)
    assert sw.run_point(s.folder, p.name)["state"] == "done"


# ---------------------------------------------------------------------------------------------
# the Slurm launcher
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_submitit_local_executor_runs_every_point(tmp_path, data):
    """oracle: submitit's local executor (real subprocesses, one per task) ends with every
    point done, each run's metrics equal to the same point run in this process."""
    pytest.importorskip("submitit")
    spec = {"name": "l", "base": _base(data, epochs=1), "grid": {"beta": [0.05, 0.2]}}
    f = _write(tmp_path / "l.yaml", spec)
    s = sw.load(f, out=tmp_path / "slurm")
    jobs = sw.run_slurm(s, {"timeout_min": 10}, cluster="local", wait=True, log=lambda *_: None)
    assert len(jobs) == 2
    assert [sw.point_state(p)["state"] for p in s.points] == ["done", "done"]
    here = sw.load(f, out=tmp_path / "here")
    sw.write_plan(here)
    for p, q in zip(s.points, here.points):
        sw.run_point(here.folder, q.name)
        assert _lines(p.folder) == _lines(q.folder)
    assert sw.run_slurm(s, cluster="local", log=lambda *_: None) == []   # nothing left to run


def test_slurm_launcher_writes_a_job_array_with_the_parameters(tmp_path, data, monkeypatch):
    """oracle: the sbatch file submitit hands to a fake ``sbatch`` on PATH (a fake ``srun``
    beside it, which submitit only looks for): one array of the
    points that need running, the partition, time, GPUs and CPUs asked for (sweep file, then
    --slurm over it), the USR2 signal before the time limit (requeue and resume), and the
    submitit entry point as the command."""
    pytest.importorskip("submitit")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "sbatch"
    fake.write_text(f"#!/bin/sh\ncp \"$1\" {tmp_path}/submitted.sh\n"
                    "echo 'Submitted batch job 4242'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")      # submitit looks for srun
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    spec = {"name": "arr", "base": _base(data), "grid": {"beta": [0.01, 0.02, 0.05]},
            "slurm": {"timeout_min": 300, "gpus_per_node": 2, "slurm_partition": "gpu"}}
    s = sw.load(_write(tmp_path / "arr.yaml", spec), out=tmp_path / "out")
    jobs = sw.run_slurm(s, {"timeout_min": 90, "cpus_per_task": 6}, log=lambda *_: None)
    assert [j.job_id for j in jobs] == ["4242_0", "4242_1", "4242_2"]
    script = (tmp_path / "submitted.sh").read_text()
    for line in ("#SBATCH --array=0-2%3", "#SBATCH --partition=gpu", "#SBATCH --time=90",
                 "#SBATCH --gpus-per-node=2", "#SBATCH --cpus-per-task=6",
                 "#SBATCH --signal=USR2@120", "#SBATCH --job-name=workbench-arr",
                 "submitit.core._submit"):
        assert line in script, (line, script)
    with pytest.raises(sw.SweepError, match="bad Slurm parameter"):
        sw.run_slurm(s, {"gpus_pre_node": 1}, log=lambda *_: None)
    # on SIGUSR2 (time limit, pre-emption) submitit requeues what checkpoint() returns: the
    # same point of the same sweep, which resumes from its run folder
    again = sw.PointTask(str(s.folder.resolve())).checkpoint(s.points[1].name)
    assert again.args == (s.points[1].name,)
    assert again.function.folder == str(s.folder.resolve())


@pytest.mark.slow
def test_notebooks_mode_keeps_the_executed_notebook(tmp_path, data):
    """oracle: a point run as papermill on 03_train ends with the same metrics lines as the
    same point run by train.run, and its executed notebook is in its run folder."""
    spec = {"name": "nb", "base": _base(data, epochs=1), "grid": {"beta": [0.05]}}
    f = _write(tmp_path / "nb.yaml", spec)
    r = _sweep(f, "--out", tmp_path / "a", "--notebooks", timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    r = _sweep(f, "--out", tmp_path / "b")
    assert r.returncode == 0, r.stdout + r.stderr
    name = "beta=0.05,seed=0"
    assert (tmp_path / "a" / "nb" / name / "03_train.ipynb").is_file()
    assert _lines(tmp_path / "a" / "nb" / name) == _lines(tmp_path / "b" / "nb" / name)


# ---------------------------------------------------------------------------------------------
# experiments/: the paper's sweeps
# ---------------------------------------------------------------------------------------------
#: points per sweep, counted by hand from each grid (paper size, small variant)
SIZES = {"fig1": (6 * 4 + 4, 3 * 4 + 2), "fig2": (7 * 6, 6 * 5), "fig3": (2 * 2, 2 * 2),
         "fig4": (5 * 2, 3 * 2), "fig5": (3 * 3 * 2, 3 * 3 * 2), "table1": (8 * 2 * 3, 2 * 2 * 2),
         "table2": (5, 5), "table3": (3 * 3 * 3, 3 * 3 + 3), "resnet18": (6 * 3, 2 * 2 * 3),
         "depth": (7 * 5 * 3, 7 * 5)}


def test_every_experiment_of_the_paper_has_a_sweep_and_a_small_variant(tmp_path):
    """oracle: the paper's experiment list (docs/method.md §8, results.EXPERIMENTS) and the
    grid sizes counted by hand — each has experiments/<name>.yaml and <name>-small.yaml, every
    point of both is a valid config; the paper-size points use the paper's presets, the small
    ones Fashion-MNIST."""
    from workbench.training import presets
    from workbench.experiments import results
    assert set(SIZES) == set(results.EXPERIMENTS)
    files = sorted(p.stem for p in (ROOT / "experiments").glob("*.yaml"))
    assert files == sorted([k for k in SIZES] + [f"{k}-small" for k in SIZES])
    for name, (full, small) in SIZES.items():
        big = sw.load(ROOT / "experiments" / f"{name}.yaml", out=tmp_path)
        little = sw.load(ROOT / "experiments" / f"{name}-small.yaml", out=tmp_path)
        assert (len(big.points), len(little.points)) == (full, small), name
        assert big.spec["paper"] and little.spec["paper"].startswith(big.spec["paper"][:6])
        if not big.spec["paper"].startswith("beyond the paper"):
            assert all(p.config.preset in presets.PRESETS for p in big.points), name
        assert {p.config.dataset for p in little.points} == {"fashion-mnist"}, name
