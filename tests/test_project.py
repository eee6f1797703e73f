"""Project-level promises: packaging metadata, the environment file, the CLI, the README."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[; ]", req.strip(), maxsplit=1)[0].lower()


def test_environment_yml_matches_pyproject():
    """Oracle: pyproject.toml — environment.yml pins the same torch/torchvision as
    constraints.txt, installs the project with every extra that pyproject declares, on the
    Python that pyproject allows."""
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    py = next(d for d in deps if isinstance(d, str) and d.startswith("python="))
    assert meta["requires-python"] == ">=3.11" and py == "python=3.11"
    pip = next(d["pip"] for d in deps if isinstance(d, dict))
    pins = [line.strip() for line in (ROOT / "constraints.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    for pin in pins:
        assert pin in pip, f"environment.yml lacks {pin}"
    editable = next(p for p in pip if p.startswith("-e ."))
    extras = set(re.search(r"\[(.*)\]", editable).group(1).split(","))
    assert extras == set(meta["optional-dependencies"]), "environment.yml installs other extras"
    # every torch pin of constraints.txt satisfies pyproject's lower bounds
    for dep in meta["dependencies"]:
        if _name(dep) in ("torch", "torchvision"):
            low = dep.split(">=")[1]
            pinned = next(p for p in pins if _name(p) == _name(dep)).split("==")[1]
            assert tuple(map(int, pinned.split("."))) >= tuple(map(int, low.split(".")))


def test_readme_gives_the_two_commands_first():
    """Oracle: the project's promise — the README's first commands are `make run`, `make test`,
    and the Makefile and .ci/run implement them."""
    text = (ROOT / "README.md").read_text()
    first_block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    assert re.findall(r"^make (\w+)", first_block, re.M) == ["run", "test"]
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^run: install", makefile, re.M) and re.search(r"^test: install", makefile,
                                                                        re.M)
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_console_script_and_module_entry_point():
    """Oracle: argparse's own help — `python -m workbench` lists every sub-command."""
    out = subprocess.run([sys.executable, "-m", "workbench", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for cmd in ("gradcheck", "train", "bench"):
        assert cmd in out
    bad = subprocess.run([sys.executable, "-m", "workbench", "gradcheck", "--scheme", "sideways"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr and "centered" in bad.stderr
    neg = subprocess.run([sys.executable, "-m", "workbench", "gradcheck", "--beta", "-1"],
                         capture_output=True, text=True)
    assert neg.returncode == 2 and "beta must be > 0" in neg.stderr
    assert "Traceback" not in neg.stderr


def test_gradcheck_json_reports_every_layer():
    """Oracle: ep.compare on the same batch — gradcheck's JSON has one row per layer and, at a
    small β in float64, cosines of 1 to 4 decimals."""
    out = subprocess.run(
        [sys.executable, "-m", "workbench", "gradcheck", "--model", "mlp", "--scheme",
         "centered", "--beta", "1e-4", "--iterations", "30", "--batch-size", "4", "--json"],
        capture_output=True, text=True, check=True).stdout
    report = json.loads(out)
    assert [r["layer"] for r in report["layers"]] == [1, 2, 3]
    assert all(r["cosine"] > 0.9999 for r in report["layers"])
    assert report["dtype"] == "float64" and len(report["final_energy"]) == 2
