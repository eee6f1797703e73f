"""End to end: official-format archives → data_prep → a short VGG10 EP training on CPU."""
from __future__ import annotations

import json
import math
import subprocess
import sys
import pytest
import torch

from data_prep import imagenet, synthetic

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")


def test_archives_to_vgg10_training(tmp_path):
    """Oracle: the run folder's own records — data_prep exits 0 (with --allow-partial) on
    generated ILSVRC2012-format archives; ``workbench train --dataset imagenet --model vgg10``
    on the result trains one epoch of centered EP at 32×32 with 2 loader workers and writes an
    epoch row whose top-1/top-5 errors are fractions of the 6 val images (k/6, top-5 ≤ top-1)
    and a finite training loss, and a model with one output per prepared class."""
    from workbench.training import train
    from workbench.training.runfolder import CHECKPOINT

    src, dest, run_dir = tmp_path / "archives", tmp_path / "imagenet", tmp_path / "run"
    synthetic.write(src, "official", classes=3, train_per_class=6, val_per_class=2,
                    size=(80, 60))
    proc = subprocess.run([sys.executable, "-m", "data_prep.imagenet", "--source", str(src),
                           "--dest", str(dest), "--workers", "2", "--allow-partial"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    summary = train.run(dict(
        dataset="imagenet", data_root=str(dest), model="vgg10", image_size=32,
        scheme="centered", beta=0.05, iterations=2, epochs=1, batch_size=6, lr=0.02,
        weight_decay=2e-4, min_lr=2e-6, device="cpu", seed=0, run_dir=str(run_dir),
        workers=2, progress="none", probe_every=0))
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    epoch = [r for r in rows if r.get("type") == "epoch"]
    assert len(epoch) == 1 and epoch[0]["step"] == 3
    top1, top5 = epoch[0]["test_top1_error"], epoch[0]["test_top5_error"]
    assert any(math.isclose(top1, k / 6) for k in range(7)) and 0 <= top5 <= top1
    assert math.isfinite(epoch[0]["train_loss"])
    assert summary["test_examples"] == 6 and summary["train_examples"] == 18
    config = json.loads((run_dir / "config.json").read_text())
    assert config["dataset"] == "imagenet" and config["model"] == "vgg10"
    assert imagenet.marker_path(dest, "train", synthetic.wnids(3)[0]).is_file()
    ckpt = torch.load(run_dir / CHECKPOINT, weights_only=False)
    assert ckpt["model"]["layers.9.weight"].shape == (3, 2048)
