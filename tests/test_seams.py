"""The training side's seams: one rule for the automatic choices, one forward pass in a
precision, the model registry's input size, the checkpoint's keys and epoch statistics. Each
test names its oracle."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from workbench.engine import ep, models
from workbench.engine.precision import Precision, forward
from workbench.engine.settings import AUTO, EstimatorSettings, is_auto, resolve_precision
from workbench.experiments import runs
from workbench.training import assembly, runfolder, train
from workbench.training.config import TrainConfig


def test_the_automatic_choices_follow_one_rule():
    """Oracle: the rule as docs/method.md §7 states it — fast (and the fused kernels) for a
    float32 model of built-in layers on CUDA, strict (eager) everywhere else; explicit choices
    are kept."""
    s = EstimatorSettings()
    assert (s.precision, s.fused) == ("auto", None) and is_auto("precision", "auto")
    cases = [(torch.float32, "cuda", True, ("fast", True)),
             (torch.float32, "cuda", False, ("strict", False)),
             (torch.float64, "cuda", True, ("strict", False)),
             (torch.float32, "cpu", True, ("strict", False))]
    for dtype, device, linear, want in cases:
        r = s.resolved(dtype, device, linear)
        assert (r.precision, r.fused) == want, (dtype, device, linear)
        assert resolve_precision("auto", dtype, device, linear) == want[0]
    r = s.resolved(torch.float32, "cuda")           # linear (built-in layers) by default
    assert (r.precision, r.fused) == ("fast", True)
    kept = s.replace(precision="fast", fused=False).resolved(torch.float32, "cuda")
    assert (kept.precision, kept.fused) == ("fast", False)
    assert s.replace(fused=True).resolved(torch.float32, "cpu").fused is True
    cfg = assembly.resolve(TrainConfig(), torch.device("cpu"))
    assert (cfg.estimator.precision, cfg.estimator.fused) == ("strict", False)
    with pytest.raises(ValueError, match="unknown precision 'half'"):
        resolve_precision("half", torch.float32, "cpu")


def test_settings_compare_with_a_run_as_it_recorded_them():
    """Oracle: config.json's estimator — an automatic choice compares as what the run recorded
    (sweeps, the runs table), an explicit one as itself."""
    s = EstimatorSettings()
    recorded = dict(s.resolved(torch.float32, "cpu").to_dict())
    assert s.as_recorded(recorded) == recorded
    assert s.replace(precision="fast").as_recorded(recorded)["precision"] == "fast"
    assert s.as_recorded({}) == s.to_dict()
    assert set(AUTO) == {"precision", "fused"}
    point = {"config": {"estimator": s.to_dict(), "epochs": 1}}
    done = {"config": {"estimator": recorded, "epochs": 1}}
    table = [runs.Run(None, n, d["config"]) for n, d in (("a", point), ("b", done))]
    assert runs.differing(table) == []


def test_one_forward_pass_in_a_precision():
    """Oracle: the network's own forward — strict is ``net(x)`` bit for bit; fast is torch's
    bfloat16 autocast of it, widened to float32 (and BP's gradient uses that same pass)."""
    torch.manual_seed(0)
    net = models.build("vgg5", num_classes=4, in_channels=1, image_size=16,
                       channels=(4, 4, 4, 4, 4))
    x = torch.rand(3, 1, 16, 16)
    strict = Precision.make("strict", torch.float32, x.device)
    assert torch.equal(forward(net, x, strict), net(x))
    fast = Precision.make("fast", torch.float32, x.device)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = net(x).float()
    got = forward(net, x, fast)
    assert got.dtype == torch.float32 and torch.equal(got, want)
    _, _, logits = ep.bp_gradients(net, x, torch.tensor([0, 1, 2]), "ce", "fast")
    assert torch.equal(logits, want)


def test_the_registry_says_which_models_prepare_their_data_at_their_size():
    """Oracle: docs/method.md §8 — vgg5 takes MNIST zero-padded to 32×32; every other model is
    built for the dataset's own size; a run's image_size wins."""
    assert models.input_size("vgg5") == 32
    assert all(models.input_size(m) is None for m in models.available() if m != "vgg5")
    assert assembly.input_size(TrainConfig(model="vgg5")) == 32
    assert assembly.input_size(TrainConfig(model="mlp")) is None
    assert assembly.input_size(TrainConfig(model="mlp", image_size=20)) == 20
    with pytest.raises(ValueError, match="unknown model 'vgg6'"):
        models.input_size("vgg6")


def test_checkpoint_keys_and_epoch_statistics():
    """Oracle: the run folder's list of what a checkpoint needs, and the dict that checkpoints
    of earlier versions hold under ``acc`` — the trainer's key names include every required
    one, and epoch statistics read from such a dict write the same dict back."""
    keys = {v for k, v in vars(train.Keys).items() if k.isupper()}
    assert set(runfolder.CHECKPOINT_KEYS) - {"metrics_bytes"} <= keys
    old = {"loss": 1.5, "energy": 0.25, "change": 0.125, "steps": 3, "seconds": 2.0}
    stats = train.EpochStats(**old)
    assert dataclasses.asdict(stats) == old
    stats.add(0.5, 0.25, 0.125)
    assert (stats.loss, stats.steps) == (2.0, 4)
