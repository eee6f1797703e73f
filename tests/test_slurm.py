"""Sweeps on a real Slurm: a private one-node cluster (Debian's slurm-wlm and munge, slurmctld
and slurmd on loopback ports, scripts/slurm-one-node.sh) started for this module and stopped
after it. Each test names its oracle; skipped with the reason where Slurm cannot be started."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import torch

from test_sweep import ENV, ROOT, _base, _lines, _sweep, _write, data  # noqa: F401 (fixture)
from workbench.experiments import sweep as sw

SCRIPT = ROOT / "scripts" / "slurm-one-node.sh"


def _why_not() -> str:
    if shutil.which("slurmctld") is None or shutil.which("munged") is None \
            and not Path("/usr/sbin/munged").exists():
        return "Slurm is not installed (apt-get install slurm-wlm munge; .ci/run does)"
    if os.geteuid() != 0:
        return "the one-node cluster's daemons need root (CI runs as root)"
    return ""


pytestmark = [pytest.mark.slow, pytest.mark.skipif(bool(_why_not()), reason=_why_not() or "-")]


@pytest.fixture(scope="module")
def cluster():
    """``SLURM_CONF`` of a running one-node cluster (also set in ``ENV`` for the CLI). Its
    folder is directly under /tmp: munged's socket must sit on a path everyone may traverse
    (pytest's own temporary folders are private)."""
    folder = Path(tempfile.mkdtemp(prefix="workbench-slurm-"))
    subprocess.run([str(SCRIPT), "start", str(folder)], check=True, timeout=120,
                   capture_output=True)
    conf = str(folder / "slurm.conf")
    saved = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = ENV["SLURM_CONF"] = conf
    try:
        yield conf
    finally:
        subprocess.run(["scancel", "--user", "root"], capture_output=True)
        subprocess.run([str(SCRIPT), "stop", str(folder)], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)
        ENV.pop("SLURM_CONF", None)
        if saved is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = saved


SMALL = ["--slurm", "gpus_per_node=0", "--slurm", "cpus_per_task=1",
         "--slurm", "timeout_min=10"]


def _reference(spec: dict, tmp_path: Path) -> sw.Sweep:
    """The same sweep, every point run in this process with one thread, as the Slurm tasks run
    (OMP_NUM_THREADS=1): the uninterrupted one-process run, bit for bit."""
    f = _write(tmp_path / "here.yaml", {**spec, "name": "here"})
    here = sw.load(f, out=tmp_path / "ref")
    sw.write_plan(here)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for p in here.points:
            sw.run_point(here.folder, p.name)
    finally:
        torch.set_num_threads(threads)
    return here


def _job_ids(folder: Path) -> list[str]:
    return sorted(p.name for p in (folder / "slurm").iterdir() if p.name[0].isdigit())


def _start_now(job_id, folder: Path) -> None:
    """Slurm holds a requeued job until a begin time some minutes later; once the job is back
    in the queue as pending, let it start now (a real cluster just waits). By then the
    interrupted attempt is gone: its run folder must not be finished yet — an attempt that
    outlived the requeue's SIGTERM (submitit passes it by) until its end, before the SIGKILL
    KillWait later, would leave nothing to resume."""
    def pending():
        out = subprocess.run(["squeue", "-h", "-j", str(job_id), "-o", "%T"],
                             capture_output=True, text=True).stdout.split()
        return bool(out) and all(state == "PENDING" for state in out)
    _wait_for(pending, what=f"job {job_id} requeued")
    assert not (folder / "summary.json").exists(), \
        f"{folder.name} ended before its interruption landed: the test needs a slower run"
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True)


def _wait_for(predicate, timeout: float = 180, what: str = ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_sweep_finishes_through_sbatch_with_quiet_logs(cluster, data, tmp_path):
    """Oracles: the same points run in this process (metrics equal) and Slurm's own queue — a
    4-point sweep submitted with --launcher slurm --wait ends with every point done, nothing left
    in squeue, and no sacct warning in the output although the cluster has no accounting."""
    spec = {"name": "s4", "base": _base(data, epochs=1), "grid": {"beta": [0.05, 0.2],
                                                                  "iterations": [2, 3]}}
    f = _write(tmp_path / "s4.yaml", spec)
    r = _sweep(f, "--out", tmp_path / "out", "--launcher", "slurm", "--wait", *SMALL, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "sacct" not in (r.stdout + r.stderr).lower(), r.stdout + r.stderr
    s = sw.load(f, out=tmp_path / "out")
    assert [sw.point_state(p)["state"] for p in s.points] == ["done"] * 4
    assert subprocess.run(["squeue", "-h"], capture_output=True, text=True).stdout == ""
    here = _reference(spec, tmp_path)
    for p, q in zip(s.points, here.points):
        assert _lines(p.folder) == _lines(q.folder), p.name


def test_a_requeued_and_a_signalled_point_resume_to_the_uninterrupted_metrics(cluster, data,
                                                                               tmp_path,
                                                                               monkeypatch):
    """Oracles: an uninterrupted run of the same points in this process, and Slurm's requeue —
    one task `scontrol requeue`d and one sent SIGUSR2 (the signal `--signal=USR2@…` delivers
    before a time limit; submitit checkpoints and requeues the task) once each has written a
    checkpoint: both resume from their run folders and end with the uninterrupted metrics."""
    # a run long enough (~10 s after its first checkpoint: 32 slow steps of 2,000 iterations)
    # that the interruption lands mid-run even on a fast machine: a requeue's SIGTERM is
    # followed by SIGKILL only KillWait (2 s) and slurmd's own polling later
    spec = {"name": "pre", "base": _base(data, epochs=2, checkpoint_every=4, probe_every=0,
                                          iterations=2000),
            "grid": {"beta": [0.05, 0.2]}}
    f = _write(tmp_path / "pre.yaml", spec)
    s = sw.load(f, out=tmp_path / "out")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")           # the tasks inherit it, as _reference
    jobs = sw.run_slurm(s, {"gpus_per_node": 0, "cpus_per_task": 1, "timeout_min": 10},
                        log=lambda *_: None)
    for job, p, how in zip(jobs, s.points, ("requeue", "usr2")):
        _wait_for(lambda: (p.folder / "checkpoint.pt").exists(), what=f"{p.name}'s checkpoint")
        if how == "requeue":
            subprocess.run(["scontrol", "requeue", str(job.job_id)], check=True)
        else:
            subprocess.run(["scancel", "--signal=USR2", str(job.job_id)], check=True)
        assert not (p.folder / "summary.json").exists(), \
            f"{p.name} ended before its {how} landed: the test needs a slower run"
    for job, p in zip(jobs, s.points):
        _start_now(job.job_id, p.folder)
    sw.wait_for_slurm([j.job_id for j in jobs])
    assert [sw.point_state(p)["state"] for p in s.points] == ["done", "done"]
    for p in s.points:        # each task really ran twice: two attempts in its training log
        assert len(list(p.folder.glob("tensorboard/events.out.tfevents.*"))) >= 2, p.name
    here = _reference(spec, tmp_path)
    for p, q in zip(s.points, here.points):
        assert _lines(p.folder) == _lines(q.folder), p.name


def test_a_two_task_point_is_one_data_parallel_run_and_survives_a_requeue(cluster, data,
                                                                        tmp_path, monkeypatch):
    """Oracles: the one-process run of the same point (float reduction order aside: parameters
    within 1e-5, train losses within 1e-5 relative) and the run folder — a point submitted
    with tasks_per_node=2 trains as one run over two processes (summary: processes 2, one
    writer), requeued once mid-run it resumes and still ends there."""
    # two epochs of a narrow mlp with very many iterations: slow steps (as the test above: the
    # run ~10 s after its first checkpoint here, 800 iterations were not enough on a faster
    # machine) so that the requeue lands mid-run, and few steps, so that float reduction order
    # has not grown into the metrics (over a long run of a wide net it does: two thread counts
    # of one process drift apart too)
    spec = {"name": "two", "base": _base(data, epochs=2, checkpoint_every=4, probe_every=8,
                                          iterations=2000),
            "grid": {"beta": [0.05]}}
    f = _write(tmp_path / "two.yaml", spec)
    s = sw.load(f, out=tmp_path / "out")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    jobs = sw.run_slurm(s, {"gpus_per_node": 0, "cpus_per_task": 1, "tasks_per_node": 2,
                            "timeout_min": 10}, log=lambda *_: None)
    p = s.points[0]
    _wait_for(lambda: (p.folder / "checkpoint.pt").exists(), what="the first checkpoint")
    subprocess.run(["scontrol", "requeue", str(jobs[0].job_id)], check=True)
    assert not (p.folder / "summary.json").exists(), "the run ended before the requeue landed"
    _start_now(jobs[0].job_id, p.folder)
    sw.wait_for_slurm([jobs[0].job_id])
    assert sw.point_state(p)["state"] == "done", sw.point_state(p)
    summary = json.loads((p.folder / "summary.json").read_text())
    assert summary["hardware"]["processes"] == 2
    assert len(list(p.folder.glob("tensorboard/events.out.tfevents.*"))) >= 2   # two attempts
    here = _reference(spec, tmp_path)
    q = here.points[0]
    a = torch.load(p.folder / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(q.folder / "checkpoint.pt", weights_only=True)["model"]
    for k in b:
        assert torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6), k
    la, lb = _lines(p.folder), _lines(q.folder)
    assert [(r["type"], r["step"]) for r in la] == [(r["type"], r["step"]) for r in lb]
    for r1, r2 in zip(la, lb):
        if r1["type"] == "epoch":
            assert r1["train_loss"] == pytest.approx(r2["train_loss"], rel=1e-5)
