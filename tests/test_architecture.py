"""The package's seams (docs/method.md and README "Architecture"). Each test names its oracle."""
from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import workbench
from workbench import flags
from workbench.engine.settings import EstimatorSettings
from workbench.training import config

ROOT = Path(__file__).resolve().parents[1]


def _modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(workbench.__path__, "workbench.")
                  if m.name != "workbench.__main__")          # that one runs the CLI


def test_workbench_never_imports_data_prep():
    """Oracle: sys.modules of a fresh interpreter after importing every workbench module
    (the dependency points one way: data_prep may import workbench)."""
    code = ("import sys, importlib\n"
            f"for m in {_modules()!r}:\n"
            "    importlib.import_module(m)\n"
            "print(sorted(k for k in sys.modules if k.split('.')[0] == 'data_prep'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout.strip()
    assert out == "[]", out


def test_every_name_a_module_exports_exists():
    """Oracle: each module's own namespace — every name in its ``__all__`` is defined there
    (``from module import *`` and the API docs read it)."""
    missing = [(name, n) for name in _modules()
               for n in getattr(importlib.import_module(name), "__all__", ())
               if not hasattr(importlib.import_module(name), n)]
    assert missing == []


def test_no_private_name_is_imported_from_another_module():
    """Oracle: the syntax tree of every workbench module — no ``from X import _name`` where X is
    another workbench module (relative or absolute), and no ``module._name`` attribute read of
    a workbench module imported by name."""
    bad = []
    for path in sorted((ROOT / "workbench").rglob("*.py")):
        tree = ast.parse(path.read_text())
        local_modules = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                inside = node.level > 0 or (node.module or "").startswith("workbench")
                for alias in node.names:
                    if inside and alias.name.startswith("_") and alias.name != "__version__":
                        bad.append(f"{path.name}: from {node.module} import {alias.name}")
                    if inside:
                        local_modules.add(alias.asname or alias.name)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                    and node.value.id in local_modules and node.attr.startswith("_") \
                    and not node.attr.startswith("__"):
                bad.append(f"{path.name}: {node.value.id}.{node.attr}")
    assert not bad, bad


def _flat_fields(obj, prefix=()):
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from _flat_fields(value, prefix + (f.name,))
        else:
            yield f, value


def test_train_flags_are_the_config_fields_with_their_defaults():
    """Oracle: the dataclasses themselves — the train parser has exactly one flag per
    TrainConfig field, per EstimatorSettings field (flattened) and per RunOptions field, each
    with the field's default (read back through config_from_args with no flags given), and a
    hidden flag per field of earlier versions (``config.RENAMED``) that says what replaced it."""
    p = argparse.ArgumentParser()
    config.add_arguments(p)
    options = [a for a in p._actions if a.option_strings and a.dest != "help"
               and a.dest not in config.RENAMED]
    dests = [a.dest for a in options]
    every = [*_flat_fields(config.TrainConfig()), *_flat_fields(config.RunOptions())]
    fields = {f.name: v for f, v in every}
    assert sorted(dests) == sorted(fields), set(dests) ^ set(fields)
    assert len(dests) == len(set(dests))
    for a in options:
        flag = flags.flag_name(next(f for f, _ in every if f.name == a.dest))
        assert flag in a.option_strings
    assert config.config_from_args(p.parse_args([])) == (config.TrainConfig(),
                                                          config.RunOptions())
    # and every EstimatorSettings field reaches the config through its flag
    args = p.parse_args(["--scheme", "random", "--beta", "0.3", "--iterations", "7", "--cost",
                         "mse", "--update", "pgd", "--order", "sync", "--signs", "batch",
                         "--tol", "1e-6", "--precision", "fast", "--no-fused",
                         "--perturbation", "clamp", "--step-size", "0.5"])
    assert config.config_from_args(args)[0].estimator == EstimatorSettings(
        "random", 0.3, 7, "mse", "pgd", "sync", "batch", 1e-6, "fast", False, "clamp", 0.5)


def test_gradcheck_and_bench_flags_come_from_the_same_settings():
    """Oracle: EstimatorSettings' fields and choices — gradcheck has a flag for each, bench for
    each but ``scheme`` (it times a list, --schemes); the choices are the dataclass's."""
    for name, skip in (("workbench.gradcheck", set()), ("workbench.bench", {"scheme"})):
        mod = importlib.import_module(name)
        p = argparse.ArgumentParser()
        mod.add_arguments(p)
        by_dest = {a.dest: a for a in p._actions}
        for f in dataclasses.fields(EstimatorSettings):
            if f.name in skip:
                assert f.name not in by_dest
                continue
            assert f.name in by_dest, (name, f.name)
            if "choices" in f.metadata:
                assert tuple(by_dest[f.name].choices) == f.metadata["choices"], (name, f.name)


# the packages of workbench and the ones each may import (README "Layout"): the engine knows
# nothing of training, training nothing of experiments, data nothing of models; the tools at
# the top (bench, gradcheck, widgets, cli) may use everything below them
ALLOWED = {
    "flags": set(), "files": set(),
    "engine": {"flags"},
    "data": {"files", "flags"},
    "seeded": {"data", "engine"},
    "training": {"engine", "data", "files", "flags"},
    "experiments": {"training", "engine", "data", "files", "flags"},
    "gradcheck": {"seeded", "engine", "data", "flags"},
    "bench": {"seeded", "training", "engine", "data", "files", "flags"},
    "widgets": {"experiments", "training", "seeded", "engine", "data", "files", "flags"},
    "cli": set(),                   # it imports the commands by name, when one is run
    "__main__": {"cli"}, "__init__": {"engine"},
}


def _imports_by_package() -> dict:
    """``{package: {packages it imports}}`` from the syntax tree of every module (relative and
    absolute imports, inside functions too)."""
    out: dict = {}
    for path in sorted((ROOT / "workbench").rglob("*.py")):
        rel = path.relative_to(ROOT / "workbench")
        me = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        here = ["workbench", *rel.parts[:-1]]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here[:len(here) - node.level + 1]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                targets = [f"{mod}.{a.name}" for a in node.names] if mod == "workbench" \
                    else [mod]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            for t in targets:
                parts = t.split(".")
                if parts[0] == "workbench" and len(parts) > 1 and parts[1] != me:
                    out.setdefault(me, set()).add(parts[1])
    return out


def test_dependencies_point_down_from_package_to_package():
    """Oracle: the syntax tree of every module against the table ALLOWED above — each package
    imports only the ones below it (no cycle, no import upward), and every package is in the
    table."""
    graph = _imports_by_package()
    packages = {p.stem if p.is_file() else p.name for p in (ROOT / "workbench").iterdir()
                if (p.suffix == ".py" or (p / "__init__.py").is_file())}
    assert packages <= set(ALLOWED), packages - set(ALLOWED)
    bad = {me: sorted(used - ALLOWED[me]) for me, used in graph.items() if used - ALLOWED[me]}
    assert not bad, bad


def test_the_widgets_build_a_run_without_the_trainer():
    """Oracle: sys.modules of a fresh interpreter — loading a run folder's model (the widgets'
    load_run path: assembly, config, run folder) does not import the training loop."""
    code = ("import sys\n"
            "import workbench.widgets.lab, workbench.training.assembly\n"
            "print('workbench.training.train' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout.strip()
    assert out == "False", out


#: about 200 lines of class body at most (a longer class is two responsibilities)
LONGEST_CLASS = 215


def test_no_class_is_longer_than_about_200_lines():
    """Oracle: each class's extent in the module's syntax tree."""
    long = []
    for path in sorted((ROOT / "workbench").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > LONGEST_CLASS:
                    long.append(f"{path.relative_to(ROOT)}:{node.name} ({lines} lines)")
    assert not long, f"classes over {LONGEST_CLASS} lines: {long}"
