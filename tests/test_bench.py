"""`workbench bench` and `bench/gpu_check.sh`. Each test names its oracle.

Speed itself is never asserted here (benchmarks, not unit tests, check speed targets): these
tests check the harness — its arithmetic, its fidelity rule, its errors and that the GPU script
runs end to end on a CPU.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from workbench import bench, cli
from workbench.engine import ep

ROOT = Path(__file__).resolve().parents[1]


def run_cli(argv, capsys):
    rc = cli.main(["bench", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_json_is_consistent_and_strict_mode_is_faithful(tmp_path, capsys):
    """Oracles: the report's own arithmetic (median of the timed steps, images/s = batch / time,
    EP/BP = time ratio, profile shares ≤ 1, --out file == printed JSON) and float64 — in strict
    fp32 on the CPU every layer's estimate has cosine ≥ 0.9999 with the float64 run of the same
    estimator, so the rule passes."""
    out_file = tmp_path / "bench.json"
    rc, out, _ = run_cli(["--model", "mlp", "--batch-size", "8", "--schemes", "bp", "centered",
                          "random", "--measure", "speed", "fidelity", "profile",
                          "--iterations", "4",
                          "--repeats", "3", "--fidelity-batch", "4", "--fidelity-betas", "0.05",
                          "0.001", "--device", "cpu", "--out", str(out_file)], capsys)
    assert rc == 0
    report = json.loads(out)
    assert json.loads(out_file.read_text()) == report
    assert report["device"] == "cpu" and report["torch"] == torch.__version__
    algs = report["speed"]["algorithms"]
    assert set(algs) == {"bp", "centered", "random"}
    for a, r in algs.items():
        assert len(r["ms_all"]) == 3
        assert r["ms_per_step"] == pytest.approx(statistics.median(r["ms_all"]), abs=1e-3)
        assert r["images_per_s"] == pytest.approx(8 / r["ms_per_step"] * 1e3)
        assert r["time_vs_bp"] == pytest.approx(r["ms_per_step"] / algs["bp"]["ms_per_step"])
        assert r["peak_memory_mib"] is None
    for a, prof in report["profile"].items():
        assert prof["clock"] == "cpu" and prof["ops"], a
        assert sum(op["share"] for op in prof["ops"]) <= 1 + 1e-9
    fid = report["fidelity"]
    assert len(fid["bp"]["strict"]) == 3 and fid["pass"] is True
    for beta in ("0.05", "0.001"):
        for scheme in ("centered", "random"):
            row = fid["betas"][beta][scheme]["strict"]
            assert min(row["cosine"]) >= 0.9999, (beta, scheme, row)
            assert row["pass"]


def test_fidelity_rule_catches_a_corrupted_layer(monkeypatch):
    """Oracle: mutation — noise of the gradient's own size added to layer 2 of the float32
    estimate fails the rule on layer 2 (negative margin) and nowhere else."""
    torch.manual_seed(0)
    net, x, y = bench.make_batch("mlp", 8, 1, 5, 4, torch.device("cpu"), widths=(16, 12))
    real = ep.estimate

    def corrupted(net_, x_, y_, *settings, **kw):
        est = real(net_, x_, y_, *settings, **kw)
        if x_.dtype == torch.float32:
            g = est.grads["layers.1.weight"]
            est.grads["layers.1.weight"] = g + torch.randn_like(g) * g.norm() / g.numel() ** 0.5
        return est

    monkeypatch.setattr(ep, "estimate", corrupted)
    res = bench.fidelity(net, x, y, ["centered"], betas=(0.01,), iterations=4)
    row = res["betas"]["0.01"]["centered"]["strict"]
    assert not row["pass"] and not res["pass"]
    assert [m < 0 for m in row["margin"]] == [False, True, False]


def test_speed_harness_order_medians_and_ratio(monkeypatch):
    """Oracle: a scripted clock — warm-up calls first, then the algorithms round-robin; the
    report holds each algorithm's median and its ratio to BP's median."""
    calls = []
    monkeypatch.setattr(bench, "make_step", lambda net, x, y, a, *rest: lambda: calls.append(a))
    script = iter([10.0, 50.0, 12.0, 41.0, 11.0, 45.0])

    def timer(fn):
        fn()
        return next(script)
    monkeypatch.setattr(bench, "make_timer", lambda device, cpu_timer: timer)
    x = torch.zeros(4, 1)
    out = bench.speed(None, x, None, ["bp", "centered"], warmup=2, repeats=3)
    assert calls == ["bp", "bp", "centered", "centered"] + ["bp", "centered"] * 3
    assert out["bp"]["ms_per_step"] == 11.0 and out["centered"]["ms_per_step"] == 45.0
    assert out["centered"]["time_vs_bp"] == pytest.approx(45 / 11)
    assert out["bp"]["images_per_s"] == pytest.approx(4 / 11e-3)


@pytest.mark.parametrize("argv,needle", [
    (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["--warmup", "-1"], "--warmup must be >= 0"),
    (["--fidelity-betas", "0.05", "0"], "--fidelity-betas take values > 0"),
    (["--beta", "-1"], "beta must be > 0"),
])
def test_bad_arguments_say_what_is_accepted(argv, needle, capsys):
    """Oracle: the CLI contract — exit status 2 and a message naming the bad flag and the
    accepted values, no traceback."""
    rc, out, err = run_cli(argv, capsys)
    assert rc == 2 and out == ""
    assert needle in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")
def test_cuda_device_without_cuda_is_a_clear_error(capsys):
    """Oracle: the CLI contract — asking for CUDA where there is none says so and what to use."""
    rc, _, err = run_cli(["--device", "cuda"], capsys)
    assert rc == 2 and "CUDA is not available" in err and "--device cpu" in err


def test_loader_mode_passes_its_arguments(monkeypatch, capsys):
    """Oracle: the documented call — `--loader` calls workbench.data.imagenet.bench_loader with
    data_root, image_size, batch_size, workers, batches, gpu_decode, device and prints its dict;
    without that module the error says what is missing."""
    import workbench.data.imagenet as imagenet

    seen = {}

    def fake(**kw):
        seen.update(kw)
        return {"images_per_s": 123.0}
    monkeypatch.setattr(imagenet, "bench_loader", fake)
    rc, out, _ = run_cli(["--loader", "--data-root", "/data/imagenet", "--image-size", "160",
                          "--batch-size", "32", "--workers", "3", "--batches", "5",
                          "--device", "cpu"], capsys)
    assert rc == 0 and json.loads(out)["loader"] == {"images_per_s": 123.0}
    assert seen == dict(data_root="/data/imagenet", image_size=160, batch_size=32, workers=3,
                        batches=5, gpu_decode=False, device="cpu")
    monkeypatch.setitem(sys.modules, "workbench.data.imagenet", None)
    rc, _, err = run_cli(["--loader", "--device", "cpu"], capsys)
    assert rc == 2 and "--loader needs workbench.data.imagenet.bench_loader" in err


def _script(*args, env=None):
    return subprocess.run([str(ROOT / "bench" / "gpu_check.sh"), *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=300)


def test_gpu_check_script_help_and_no_gpu_message():
    """Oracle: the script's contract — --help documents --cpu-smoke and $OUT; without a GPU
    it exits 1 with a message pointing to --cpu-smoke (no traceback)."""
    r = _script("--help")
    assert r.returncode == 0 and "--cpu-smoke" in r.stdout and "$OUT" in r.stdout
    if not torch.cuda.is_available():
        r = _script()
        assert r.returncode == 1 and "no CUDA device" in r.stderr and "--cpu-smoke" in r.stderr
        assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_gpu_check_cpu_smoke_runs_every_section(tmp_path):
    """Oracles: the script end to end on a tiny VGG10 (every section ran, the table and the JSON
    in $OUT agree) and float64 — strict-mode EP matches the float64 run of the same estimator
    (cosine ≥ 0.9999) on every layer, every β and scheme."""
    r = _script("--cpu-smoke", env={"OUT": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert set(report["sections"]) == {"tests", "speed", "profile", "fidelity", "memory", "train"}
    for name, sec in report["sections"].items():
        assert "error" not in sec, (name, sec)
    fid = report["sections"]["fidelity"]
    assert set(fid["betas"]) == {"0.05", "0.005", "0.0005"}
    for beta, rows in fid["betas"].items():
        for scheme, by_precision in rows.items():
            assert min(by_precision["strict"]["cosine"]) >= 0.9999, (beta, scheme)
    speed = report["sections"]["speed"]
    assert set(speed) == {"strict", "fast"}
    assert set(speed["fast"]) == {"infer", "bp", "forward", "centered", "random"}
    prof = report["sections"]["profile"]["fast"]
    assert any("conv" in op["name"] for op in prof["ops"])
    assert abs(sum(c["share"] for c in prof["categories"].values()) - 1) < 1e-9
    assert prof["categories"]["convolution"]["ms"] > 0
    assert report["sections"]["tests"]["returncode"] == 0          # collected, not run, on CPU
    train = report["sections"]["train"]
    for a in ("ep", "bp"):
        assert train[a]["epochs"] >= 1 and 0 <= train[a]["test_top1_error"] <= 1
        assert len(train[a]["per_epoch"]) == train[a]["epochs"]
    for line in ("fidelity, batch 4", "speed, batch 4", "memory, centered EP",
                 "profile, centered EP fast", "tests (pytest -m gpu)", "train, mlp on synthetic"):
        assert line in r.stdout
    assert f"wrote {tmp_path / 'gpu_check.json'}" in r.stdout


def test_gpu_check_general_section_cpu_smoke(tmp_path):
    """Oracle: float64 — the script's general section (resnet18 with train-mode BatchNorm, vit)
    in its CPU dry run: strict-mode centered EP and BP match their float64 runs (cosine ≥
    0.9999 on every layer), and BP and EP were both timed."""
    r = _script("--cpu-smoke", "--sections", "general", env={"OUT": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    gen = json.loads((tmp_path / "gpu_check.json").read_text())["sections"]["general"]
    assert set(gen) == {"resnet18", "vit"}, gen
    for name, sec in gen.items():
        assert min(sec["fidelity"]["betas"]["0.005"]["centered"]["strict"]["cosine"]) >= 0.9999
        assert min(sec["fidelity"]["bp"]["strict"]) >= 0.9999, name
        assert sec["speed"]["bp"]["ms_per_step"] > 0 and sec["speed"]["centered"]["ms_per_step"] > 0
    assert "general path, strict fp32" in r.stdout


def test_profile_bookkeeping_union_and_categories():
    """Oracles: hand-computed interval arithmetic — kernels at [0, 2], [1, 3], [5, 6] are busy
    4 µs of a 6 µs span (2 µs of gaps); and the category table — operators are counted under
    the first matching group of their outermost operator's name."""
    assert bench.busy_and_span([(5, 6), (0, 2), (1, 3)]) == (4, 6)
    assert bench.busy_and_span([]) == (0.0, 0.0)
    assert bench.category("aten::conv_transpose2d") == "convolution"
    assert bench.category("aten::max_unpool2d") == "pooling"
    assert bench.category("aten::to") == "cast / copy"
    assert bench.category("Torch-Compiled Region: 0/1") == "compiled (fused)"
    assert bench.category("aten::maximum") == "elementwise / other"
