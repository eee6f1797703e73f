"""Training in real processes: resume after SIGKILL, and torchrun data parallelism."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import write_cifar, write_mnist

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "WORKBENCH_DATA": ""}
TORCHRUN = Path(sys.executable).with_name("torchrun")


def _train(extra: list[str], run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "workbench", "train", *extra, "--run-dir", str(run_dir)]


def _lines(run_dir: Path) -> list[dict]:
    timing = {"images_per_second", "seconds"}
    return [{k: v for k, v in json.loads(line).items() if k not in timing}
            for line in open(run_dir / "metrics.jsonl")]


def _params(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"]


def kill_and_resume(cmd: list[str], run_dir: Path, env: dict = ENV) -> None:
    """Run ``cmd`` (a ``workbench train`` into ``run_dir``), SIGKILL it as soon as its first
    checkpoint appears, and resume it with ``--resume`` to the end."""
    proc = subprocess.Popen(cmd, env=env)
    deadline = time.monotonic() + 120
    while not (run_dir / "checkpoint.pt").exists() and proc.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.kill()
    proc.wait()
    assert proc.returncode == -9 and not (run_dir / "summary.json").exists(), "not killed mid-run"
    subprocess.run([sys.executable, "-m", "workbench", "train", "--run-dir", str(run_dir),
                    "--resume"], env=env, check=True, timeout=300)


def resume_equals_uninterrupted(flags: list[str], tmp_path: Path) -> Path:
    """Train ``flags`` uninterrupted into ``tmp_path/a`` and killed-then-resumed into
    ``tmp_path/b``; assert the same metrics lines (timings aside) and bit-identical parameters;
    return ``b``."""
    a, b = tmp_path / "a", tmp_path / "b"
    subprocess.run(_train(flags, a), env=ENV, check=True, timeout=300)
    kill_and_resume(_train(flags, b), b)
    assert _lines(b) == _lines(a)
    pa, pb = _params(a), _params(b)
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    return b


def _cifar_flags(tmp_path: Path, scheme: str) -> list[str]:
    """A small mlp on test-written CIFAR-10 pickles, for the multi-process runs."""
    write_cifar(tmp_path / "data", 10, per_file=64)
    return ["--dataset", "cifar10", "--data-root", str(tmp_path / "data"), "--no-download",
            "--model", "mlp", "--model-arg", "widths=[32]", "--scheme", scheme,
            "--beta", "0.05", "--iterations", "4", "--epochs", "2", "--batch-size", "32",
            "--lr", "0.02", "--probe-every", "4", "--progress", "none", "--device", "cpu"]


def assert_equals_one_process(one: Path, many: Path, processes: int) -> None:
    """``many`` (a multi-process run) ends as the one-process run ``one`` up to float reduction
    order: parameters to 1e-5, the same rows, train losses to 1e-5 relative."""
    p1, p2 = _params(one), _params(many)
    for k in p1:
        assert torch.allclose(p1[k], p2[k], rtol=1e-5, atol=1e-6), k
    l1, l2 = _lines(one), _lines(many)
    assert [(r["type"], r["step"]) for r in l2] == [(r["type"], r["step"]) for r in l1]
    for r1, r2 in zip(l1, l2):
        if r1["type"] == "epoch":
            assert r2["train_loss"] == pytest.approx(r1["train_loss"], rel=1e-5)
    assert json.loads((many / "summary.json").read_text())["hardware"]["processes"] == processes


@pytest.mark.slow
def test_resume_after_sigkill_equals_the_uninterrupted_run(tmp_path):
    """oracle: resume == uninterrupted run: a training process killed with SIGKILL as soon as
    its first checkpoint appears, then resumed with ``--resume``, ends with bit-identical
    parameters and the same metrics lines (timings aside)."""
    write_mnist(tmp_path / "data" / "fashion-mnist", n_train=2048, n_test=64)
    flags = ["--dataset", "fashion-mnist", "--data-root", str(tmp_path / "data"),
             "--no-download", "--model", "mlp", "--model-arg", "widths=[128,128]",
             "--scheme", "random", "--beta", "0.05", "--iterations", "4", "--epochs", "3",
             "--batch-size", "8", "--lr", "0.02", "--checkpoint-every", "5",
             "--probe-every", "7", "--progress", "none", "--device", "cpu"]
    b = resume_equals_uninterrupted(flags, tmp_path)
    summary = json.loads((b / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 3 * 256


@pytest.mark.slow
@pytest.mark.skipif(not TORCHRUN.exists() and not shutil.which("torchrun"),
                    reason="torchrun not installed")
def test_two_processes_equal_one(tmp_path):
    """oracle: the single-process run: ``torchrun --nproc_per_node 2`` (gloo, CPU) on the same
    global batches, with CIFAR augmentation and the random scheme's signs, ends with the same
    parameters up to float reduction order, and only rank 0 writes the run folder."""
    flags = _cifar_flags(tmp_path, "random")
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run(_train(flags, one), env=ENV, check=True, timeout=300)
    torchrun = str(TORCHRUN) if TORCHRUN.exists() else shutil.which("torchrun")
    subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2",
                    *_train(flags, two)[1:]], env=ENV, check=True, timeout=300)
    assert_equals_one_process(one, two, 2)
    for r1, r2 in zip(_lines(one), _lines(two)):
        if r1["type"] == "epoch":
            assert abs(r2["test_top1_error"] - r1["test_top1_error"]) <= 1 / 64 + 1e-12


@pytest.mark.slow
@pytest.mark.skipif(not TORCHRUN.exists() and not shutil.which("torchrun"),
                    reason="torchrun not installed")
def test_two_nodes_by_torchrun_rendezvous_equal_one_process(tmp_path):
    """oracle: the single-process run: two torchrun launchers on this machine, each one "node"
    of a 2-node job (``--nnodes 2 --rdzv-backend c10d --rdzv-endpoint 127.0.0.1:PORT``, as on
    two real nodes), train as one process does (parameters up to float reduction order, the
    same losses), and only the rank-0 node writes the run folder."""
    import socket
    flags = _cifar_flags(tmp_path, "centered")
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run(_train(flags, one), env=ENV, check=True, timeout=300)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torchrun = str(TORCHRUN) if TORCHRUN.exists() else shutil.which("torchrun")
    nodes = [subprocess.Popen([torchrun, "--nnodes", "2", "--nproc_per_node", "1",
                               "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
                               "--rdzv-id", "two-nodes", *_train(flags, two)[1:]], env=ENV)
             for _ in range(2)]
    assert [n.wait(timeout=300) for n in nodes] == [0, 0]
    assert_equals_one_process(one, two, 2)
