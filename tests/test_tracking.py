"""Tracking: TensorBoard event files read back with tensorboard's own reader, and W&B's calls
(offline mode) against a stand-in module."""
from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
from conftest import write_mnist

from workbench.training import tracking
from workbench.training.train import run

EventAccumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator").EventAccumulator


def _config(tmp_path: Path, **extra) -> dict:
    write_mnist(tmp_path / "data" / "fashion-mnist", n_train=128, n_test=32)
    return {"dataset": "fashion-mnist", "data_root": str(tmp_path / "data"), "download": False,
            "model": "mlp", "model_args": {"widths": [16, 16]}, "epochs": 3, "batch_size": 16,
            "lr": 0.02, "iterations": 3, "probe_every": 5, "progress": "none",
            "device": "cpu", "run_dir": str(tmp_path / "run"), **extra}


def _events(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(run_dir / tracking.TENSORBOARD_DIR), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _expected(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """What metrics.jsonl says each tag must hold (the oracle), written out per row type."""
    want: dict[str, list] = {}
    for line in open(run_dir / "metrics.jsonl"):
        row = json.loads(line)
        if row["type"] == "epoch":
            pairs = {"test/top1_error": row["test_top1_error"],
                     "test/top5_error": row["test_top5_error"], "test/loss": row["test_loss"],
                     "train/loss": row["train_loss"], "train/lr": row["lr"],
                     "train/final_energy": row["final_energy"],
                     "train/images_per_second": row["images_per_second"]}
        else:
            pairs = {f"probe/{what}/layer_{i + 1}": v for what in ("cosine", "rel_error")
                     for i, v in enumerate(row[what])}
        for tag, v in pairs.items():
            want.setdefault(tag, []).append((row["step"], v))
    return want


def _check(run_dir: Path) -> None:
    got, want = _events(run_dir), _expected(run_dir)
    for tag, pairs in want.items():
        assert [s for s, _ in got[tag]] == [s for s, _ in pairs], tag
        assert [v for _, v in got[tag]] == pytest.approx([v for _, v in pairs], rel=1e-6), \
            tag                                                 # stored as float32


def test_tensorboard_events_equal_metrics_jsonl(tmp_path):
    """oracle: metrics.jsonl — every epoch and probe value is in the event files at its step
    (tensorboard's EventAccumulator), and the HParams plugin holds the run's hyper-parameters
    with its final test error."""
    summary = run(_config(tmp_path))
    run_dir = Path(summary["run_dir"])
    _check(run_dir)
    got = _events(run_dir)
    assert got["hparams/test_top1_error"][-1][1] == pytest.approx(summary["test_top1_error"])
    acc = EventAccumulator(str(run_dir / tracking.TENSORBOARD_DIR))
    acc.Reload()
    assert acc.PluginTagToContent("hparams"), "no hparams summary"


def test_tensorboard_after_a_crash_and_resume_equals_metrics_jsonl(tmp_path):
    """oracle: metrics.jsonl of a run that crashed after writing (and flushing) events past its
    last checkpoint, then resumed: the events of the crashed attempt after the checkpoint's
    step are purged (purge_step), so each tag holds the resumed run's rows once each — while
    the raw event files, read without purging, do hold the crashed attempt's extra step."""
    class Crash(Exception):
        pass

    def crash(row):
        if row["type"] == "probe" and row["step"] == 10:    # checkpoints at steps 3, 6, 9
            raise Crash

    cfg = _config(tmp_path, checkpoint_every=3, epochs=4)
    with pytest.raises(Crash):
        run(cfg, callback=crash)
    run_dir = Path(cfg["run_dir"])
    assert not (run_dir / "summary.json").exists()
    run({**cfg, "resume": True})
    _check(run_dir)
    raw = _raw_steps(run_dir, "probe/cosine/layer_1")
    assert raw.count(10) == 2 and raw.count(5) == 1, raw


def test_wandb_offline_logs_the_same_scalars(tmp_path, monkeypatch):
    """oracle: workbench.training.tracking.scalars of each metrics.jsonl row — a stand-in ``wandb``
    module records init (offline mode) and every log call; wandb=True without the package is
    a clear error before anything is written."""
    calls = {"init": [], "log": [], "finish": 0}

    class FakeRun:
        summary: dict = {}

        def log(self, values, step):
            calls["log"].append((step, values))

        def finish(self):
            calls["finish"] += 1

    fake = types.ModuleType("wandb")
    fake.init = lambda **kw: calls["init"].append(kw) or FakeRun()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    summary = run(_config(tmp_path, wandb=True, tensorboard=False))
    assert calls["init"][0]["mode"] == "offline" and calls["finish"] == 1
    rows = [json.loads(line) for line in open(Path(summary["run_dir"]) / "metrics.jsonl")]
    assert calls["log"] == [(r["step"], tracking.scalars(r)) for r in rows]
    assert not (Path(summary["run_dir"]) / tracking.TENSORBOARD_DIR).exists()

    monkeypatch.setitem(sys.modules, "wandb", None)            # import wandb → ImportError
    with pytest.raises(ValueError, match="needs the wandb package"):
        run(_config(tmp_path, wandb=True, run_dir=str(tmp_path / "other")))
    assert not (tmp_path / "other" / "config.json").exists()


def _raw_steps(run_dir: Path, tag: str) -> list[int]:
    acc = EventAccumulator(str(run_dir / tracking.TENSORBOARD_DIR), size_guidance={"scalars": 0},
                           purge_orphaned_data=False)
    acc.Reload()
    return [e.step for e in acc.Scalars(tag)]
