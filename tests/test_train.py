"""The training loop, its run folder and its reliability (``workbench.training.train``)."""
from __future__ import annotations

import argparse
import json
import math
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import needs_fashion_mnist

from workbench import data
from workbench.engine import ep, models
from workbench.data.loader import mix_seed
from workbench.training.train import (NonFiniteError, RunOptions, TrainConfig, add_arguments,
                                      as_run, config_from_args, run)
from workbench.training.config import record

TIMING = {"images_per_second", "seconds"}


def tiny(tmp_path, **kw) -> dict:
    """A sub-second run: synthetic 3×8×8 images, a one-hidden-layer mlp (config fields and run
    options in one flat dict, as ``run`` takes them)."""
    base = dict(dataset="synthetic", image_size=8, model="mlp", model_args={"widths": [16]},
                epochs=2, batch_size=32, limit_train=128, limit_test=64, lr=0.05,
                beta=0.05, iterations=4, probe_every=3, probe_size=16, device="cpu",
                progress="none", run_dir=str(tmp_path / "run"))
    return {**base, **kw}


def rows(run_dir) -> list[dict]:
    return [json.loads(line) for line in open(f"{run_dir}/metrics.jsonl")]


def untimed(rs: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rs]


def final_params(run_dir) -> dict:
    return torch.load(f"{run_dir}/checkpoint.pt", weights_only=True)["model"]


# ---------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------
def test_config_round_trips_through_a_dict():
    """oracle: ``TrainConfig(**cfg.to_dict()) == cfg`` (what config.json and notebooks use),
    the same for the run options; a flat dict splits into the two."""
    cfg = TrainConfig(model="mlp", model_args={"widths": [8]}, limit_train=64)
    assert TrainConfig(**cfg.to_dict()) == cfg
    opts = RunOptions(run_dir="r", device="cpu", workers=2)
    assert RunOptions(**opts.to_dict()) == opts
    assert as_run({**cfg.to_dict(), **opts.to_dict()}) == (cfg, opts)
    assert as_run(cfg, {"run_dir": "r", "device": "cpu", "workers": 2}) == (cfg, opts)
    saved = json.loads(json.dumps(record(cfg, opts)))       # a run folder's config.json
    assert as_run(saved) == (cfg, opts)
    with pytest.raises(ValueError, match="'run' is where a run folder's config.json keeps"):
        TrainConfig(**saved)


@pytest.mark.parametrize("change, match", [
    (dict(scheme="middle"), "unknown scheme 'middle'; accepted: forward, backward"),
    (dict(algorithm="bp"), "there is no field 'algorithm' any more: backprop is scheme 'bp'"),
    (dict(incremental=True), "incremental \\(iPC\\) runs IL's inference steps"),
    (dict(beta=-0.1), "beta must be > 0"),
    (dict(lr="0.1"), "lr must be float, got '0.1'"),
    (dict(iterations=2.5), "iterations must be an integer >= 1, got 2.5"),
    (dict(min_lr=1.0), r"min_lr must be in \[0, lr\]"),
    (dict(momentum=0.0), "nesterov needs momentum > 0"),
    (dict(resume=True, run_dir=None), "resume needs run_dir"),
    (dict(limit_train=0), "limit_train must be >= 1"),
    (dict(device="tpu"), "device must be auto, cpu, cuda"),
    (dict(colour="red"), "unknown config fields \\['colour'\\]"),
])
def test_bad_configs_are_refused(tmp_path, change, match):
    """oracle: a ``ValueError`` naming the field, the value and what is accepted."""
    with pytest.raises(ValueError, match=match):
        run({**tiny(tmp_path), **change})


def test_batch_larger_than_the_data_is_refused(tmp_path):
    """oracle: the sampler's message, before anything is written."""
    with pytest.raises(ValueError, match="cannot fill one batch"):
        run(tiny(tmp_path, limit_train=16))
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------
# the run folder
# ---------------------------------------------------------------------------------------------
def test_run_folder_contents(tmp_path):
    """oracle: the documented files and fields (config.json: the config, the run options under
    "run"); callback rows == metrics.jsonl lines; summary == the last epoch line; errors are
    fractions."""
    seen = []
    cfg, opts = as_run(tiny(tmp_path, scheme="random"))
    summary = run(cfg, opts, callback=seen.append)
    d = tmp_path / "run"
    saved = json.loads((d / "config.json").read_text())
    # precision "auto" and fused None are recorded as what they resolved to on this device
    assert saved == {**cfg.to_dict(), "estimator": {**cfg.to_dict()["estimator"],
                                                    "precision": "strict", "fused": False},
                     "run": opts.to_dict()}
    assert summary["config"] == saved
    assert json.loads((d / "summary.json").read_text()) == summary
    lines = rows(d)
    assert lines == seen
    epochs = [r for r in lines if r["type"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2] and [r["step"] for r in epochs] == [4, 8]
    for r in epochs:
        for k in ("train_loss", "test_top1_error", "test_top5_error", "lr", "images_per_second",
                  "seconds", "final_energy", "final_state_change", "test_loss"):
            assert isinstance(r[k], float) and math.isfinite(r[k]), k
        assert 0 <= r["test_top5_error"] <= r["test_top1_error"] <= 1
    assert [r["step"] for r in lines if r["type"] == "probe"] == [0, 3, 6]
    assert summary["status"] == "completed" and summary["steps"] == 8
    assert summary["test_top1_error"] == epochs[-1]["test_top1_error"]
    assert summary["best_test_top1_error"] == min(r["test_top1_error"] for r in epochs)
    assert summary["hardware"]["device"] == "cpu" and summary["git_commit"]


def test_bp_run_equals_a_handwritten_training_loop(tmp_path):
    """oracle: plain autograd + ``torch.optim.SGD`` (Nesterov, weight decay) with the cosine
    learning rate in closed form, on the same single full batch, step for step."""
    cfg, opts = as_run(tiny(tmp_path, scheme="bp", epochs=3, limit_train=32, probe_every=0,
                            weight_decay=1e-3, min_lr=0.001))
    run(cfg, opts)
    ds = data.build("synthetic", "train", image_size=8)
    x = ds.device_transform(ds.images[:32])
    y = ds.labels[:32]
    torch.manual_seed(cfg.seed)
    net = models.build("mlp", num_classes=10, in_channels=3, image_size=8, widths=[16])
    opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=0.9, nesterov=True,
                          weight_decay=1e-3)
    for t in range(3):
        opt.param_groups[0]["lr"] = 0.001 + (cfg.lr - 0.001) * (1 + math.cos(math.pi * t / 3)) / 2
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    got = final_params(tmp_path / "run")
    for name, p in net.state_dict().items():
        assert torch.allclose(got[name], p, rtol=1e-5, atol=1e-6), name


def test_probe_is_ep_against_bp_on_the_fixed_batch(tmp_path):
    """oracle: ``ep.compare`` of ``ep.estimate`` and ``ep.bp_gradients`` at the initial
    weights on the probe batch, computed here directly."""
    cfg, _ = as_run(tiny(tmp_path, scheme="centered", beta=0.01, epochs=1))
    probe0 = next(r for r in (run(tiny(tmp_path, scheme="centered", beta=0.01, epochs=1))
                              and rows(tmp_path / "run")) if r["type"] == "probe")
    ds = data.build("synthetic", "test", image_size=8)
    idx = torch.randperm(64, generator=torch.Generator().manual_seed(
        mix_seed(cfg.seed, "probe")))[:16]
    x, y = ds.device_transform(ds.images[idx]), ds.labels[idx]
    torch.manual_seed(cfg.seed)
    net = models.build("mlp", num_classes=10, in_channels=3, image_size=8, widths=[16])
    est = ep.estimate(net, x, y, scheme="centered", beta=0.01, iterations=4)
    want = ep.compare(net, est.grads, ep.bp_gradients(net, x, y)[0])
    assert probe0["cosine"] == pytest.approx([r["cosine"] for r in want], rel=1e-6)
    assert probe0["rel_error"] == pytest.approx([r["rel_error"] for r in want], rel=1e-4)
    assert min(probe0["cosine"]) > 0.99


def test_an_existing_run_is_never_overwritten(tmp_path):
    """oracle: the first run's files (event files included), byte for byte, after a second
    run is refused."""
    run(tiny(tmp_path, epochs=1))
    d = tmp_path / "run"
    before = {p: p.read_bytes() for p in d.rglob("*") if p.is_file()}
    assert any(p.parent.name == "tensorboard" for p in before)
    with pytest.raises(ValueError, match="already holds a run; pass --resume"):
        run(tiny(tmp_path, epochs=1))
    assert {p: p.read_bytes() for p in d.rglob("*") if p.is_file()} == before


def test_resume_with_another_config_is_refused_and_shows_the_difference(tmp_path):
    """oracle: the message lists exactly the changed fields, saved → now."""
    run(tiny(tmp_path, epochs=1))
    with pytest.raises(ValueError) as e:
        run(tiny(tmp_path, epochs=1, lr=0.1, scheme="forward", resume=True, progress="text"))
    msg = str(e.value)
    assert "lr: 0.05 → 0.1" in msg and 'estimator.scheme: "centered" → "forward"' in msg
    assert "progress" not in msg


def test_cli_resume_takes_the_saved_flags(tmp_path):
    """oracle: the saved config.json, plus only the flags given on the command line."""
    cfg, opts = as_run(tiny(tmp_path, epochs=1, workers=1))
    run(cfg, opts)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--run-dir", opts.run_dir, "--resume", "--progress", "text"])
    resumed, resumed_opts = config_from_args(args)
    assert resumed == TrainConfig(**{**cfg.to_dict(), "precision": "strict", "fused": False})
    assert resumed_opts == opts.replace(resume=True, progress="text")
    args = parser.parse_args(["--model", "mlp", "--model-arg", "widths=[4,4]", "--lr", "0.5"])
    fresh, fresh_opts = config_from_args(args)
    assert fresh_opts == RunOptions()
    assert (fresh.model_args, fresh.lr, fresh.epochs) == ({"widths": [4, 4]}, 0.5, 100)


def test_in_process_crash_then_resume_is_exact(tmp_path, tiny_cifar10):
    """oracle: resume == uninterrupted run (parameters bit for bit, metrics lines equal but for
    timings), here with CIFAR augmentation, the random scheme and a crash after metrics lines
    that the last checkpoint does not cover; resuming a finished run changes nothing."""
    root, _ = tiny_cifar10
    kw = dict(dataset="cifar10", data_root=str(root), image_size=None, download=False,
              scheme="random", batch_size=16, limit_train=None, limit_test=None,
              checkpoint_every=3, probe_every=4, model_args={"widths": [32]})
    run(tiny(tmp_path / "a", **kw))

    def crash(row):
        if row["type"] == "probe" and row["step"] == 8:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(tiny(tmp_path / "b", **kw), callback=crash)
    assert rows(tmp_path / "b/run")[-1]["step"] == 8
    run(tiny(tmp_path / "b", resume=True, **kw))
    a, b = tmp_path / "a/run", tmp_path / "b/run"
    assert untimed(rows(b)) == untimed(rows(a))
    pa, pb = final_params(a), final_params(b)
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    done = (b / "metrics.jsonl").read_bytes()
    assert run(tiny(tmp_path / "b", resume=True, **kw))["steps"] == 2 * 7
    assert (b / "metrics.jsonl").read_bytes() == done


def test_non_finite_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    """oracle: the step that overflowed is named, the checkpoint on disk is an earlier step
    with finite parameters, and summary.json says why the run stopped."""
    with pytest.raises(NonFiniteError, match=r"stopped at step (\d+).*last good checkpoint"):
        run(tiny(tmp_path, lr=1e30, checkpoint_every=1, probe_every=0))
    ckpt = torch.load(tmp_path / "run/checkpoint.pt", weights_only=True)
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    assert summary["status"] == "non_finite" and f"step {ckpt['step'] + 1}" in summary["message"]
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_device_transform_of_the_dataset_is_applied(tmp_path, monkeypatch):
    """oracle: a dataset whose items are uint8 and whose ``device_transform`` counts its calls:
    every training batch (4 steps), test batch (1) and the probe batch (1) goes through it."""
    calls = []

    class Folder(torch.utils.data.TensorDataset):
        classes = ["a", "b", "c"]

        def device_transform(self, x):
            calls.append(x.dtype)
            return x.float() / 255

    gen = torch.Generator().manual_seed(0)
    fake = types.ModuleType("workbench.data.imagenet")
    fake.build = lambda root, split, size: Folder(
        torch.randint(0, 256, (64, 3, size, size), dtype=torch.uint8, generator=gen),
        torch.randint(0, 3, (64,), generator=gen))
    monkeypatch.setitem(sys.modules, "workbench.data.imagenet", fake)
    summary = run(tiny(tmp_path, dataset="imagenet", epochs=1, batch_size=16, limit_train=None,
                       probe_every=10))
    assert calls == [torch.uint8] * 6 and summary["status"] == "completed"


def test_progress_text_and_none(tmp_path, capsys):
    """oracle: ``text`` prints step lines and an epoch line; ``none`` prints nothing."""
    run(tiny(tmp_path / "t", epochs=1, progress="text"))
    out = capsys.readouterr().out
    assert "epoch 1/1 step 4/4 loss" in out and "epoch 1/1: train loss" in out
    run(tiny(tmp_path / "n", epochs=1, progress="none"))
    assert capsys.readouterr().out == ""


@pytest.mark.slow
@needs_fashion_mnist
@pytest.mark.parametrize("scheme", ["bp", "centered"])
def test_two_epochs_of_fashion_mnist_reach_20_percent(tmp_path, scheme, no_data_env):
    """oracle: the issue's bar: ≤ 20 % test error after 2 epochs of an mlp, EP and BP alike."""
    torch.set_num_threads(1)
    summary = run(dict(dataset="fashion-mnist", model="mlp", model_args={"widths": [128]},
                       scheme=scheme, beta=0.05, iterations=3,
                       epochs=2, batch_size=64, lr=0.02, probe_every=0, device="cpu",
                       progress="none", run_dir=str(tmp_path / "run")))
    assert summary["test_top1_error"] <= 0.20


def test_a_run_folder_of_the_earlier_layout_resumes_exactly(tmp_path):
    """Oracle: the same folder converted by hand to the current layout. tests/data/old_run was
    written by the workbench at commit 73f441d (config.json with the estimator's fields at the
    top level, a checkpoint at step 4 of 8, killed at step 6). Resumed as it is, and resumed
    after rewriting its config.json in the current layout (the estimator nested, with the
    settings that earlier version used: per-example signs, no tol, eager kernels), both end
    with the same parameters and metrics, bit for bit, in the same process; the old lines up to
    the checkpoint are kept. The same folder marked as a fast-precision run is refused, saying
    why."""
    import shutil
    src = Path(__file__).parent / "data" / "old_run"
    saved = json.loads((src / "config.json").read_text())
    assert "scheme" in saved and "estimator" not in saved
    est = {k: saved[k] for k in ("scheme", "beta", "iterations", "cost", "update", "order",
                                 "precision")}
    converted = {**{k: v for k, v in saved.items() if k not in est},
                 "schedule": "step", "preset": None,
                 "estimator": {**est, "signs": "example", "tol": None, "fused": False,
                               "perturbation": "nudge", "step_size": 1.0}}
    folders = []
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    for name, cfg in (("old", saved), ("converted", converted)):
        d = tmp_path / name
        shutil.copytree(src, d)
        (d / "config.json").write_text(json.dumps(cfg))
        resumed, options = config_from_args(parser.parse_args(["--run-dir", str(d), "--resume"]))
        assert resumed.schedule == "step" and resumed.estimator.fused is False
        run(resumed, options)
        folders.append(d)
    a, b = folders
    assert untimed(rows(a)) == untimed(rows(b))
    assert [r["step"] for r in rows(a) if r["type"] == "epoch"] == [4, 8]
    kept = torch.load(src / "checkpoint.pt", weights_only=True)["metrics_bytes"]
    assert (a / "metrics.jsonl").read_bytes()[:kept] == (src / "metrics.jsonl").read_bytes()[:kept]
    pa, pb = final_params(a), final_params(b)
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    fast = tmp_path / "fast"
    shutil.copytree(src, fast)
    (fast / "config.json").write_text(json.dumps({**saved, "precision": "fast"}))
    with pytest.raises(ValueError, match="fast precision of an earlier version"):
        config_from_args(parser.parse_args(["--run-dir", str(fast), "--resume"]))


@pytest.mark.parametrize("old, now", [({"algorithm": "bp"}, dict(scheme="bp")),
                                      ({"algorithm": "ipc"}, dict(scheme="il", incremental=True)),
                                      ({"algorithm": "ep"}, dict(scheme="random"))])
def test_a_config_json_of_the_previous_layout_reads_and_resumes_as_this_one(tmp_path, old, now):
    """Oracle: the config.json this version writes for the same run. The previous layout chose
    backprop and iPC by ``algorithm`` (a BP run's estimator kept its default scheme) and kept
    the run options beside the config's fields; :func:`upgrade` reads it as this layout, and a
    finished run whose config.json is rewritten in it resumes (nothing differs) and changes
    nothing."""
    from workbench.training.config import upgrade
    cfg, opts = as_run(tiny(tmp_path, epochs=1, probe_every=0, **now))
    run(cfg, opts)
    folder = tmp_path / "run"
    written = json.loads((folder / "config.json").read_text())
    previous = {k: v for k, v in written.items() if k not in ("run", "incremental")}
    previous.update(written["run"], **old)
    if old["algorithm"] == "bp":
        previous["estimator"] = {**previous["estimator"], "scheme": "centered"}
    assert upgrade(previous) == written == upgrade(written)
    assert record(*as_run(cfg, opts))["run"] == written["run"]
    (folder / "config.json").write_text(json.dumps(previous))
    before = (folder / "metrics.jsonl").read_bytes()
    assert run(cfg, opts.replace(resume=True))["status"] == "completed"
    assert (folder / "metrics.jsonl").read_bytes() == before
