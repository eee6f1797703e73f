"""The ``workbench`` command line: one sub-command per module.

Each sub-command lives in its own module, which provides ``add_arguments(parser)`` and
``main(args) -> int``; modules are imported only when their sub-command runs. A ``ValueError``
or ``FileNotFoundError`` from a sub-command (bad input) is printed as one line, exit status 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "gradcheck": ("workbench.gradcheck", "per-layer cosine / relative error of EP against BP"),
    "train": ("workbench.training.train", "train a model with EP or BP into a run folder"),
    "bench": ("workbench.bench", "speed, memory and fidelity benchmarks (JSON)"),
    "sweep": ("workbench.experiments.sweep",
              "many training runs from one sweep file (YAML), idempotent"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="workbench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules = {}
    argv = sys.argv[1:] if argv is None else list(argv)
    for name, (modname, helptext) in COMMANDS.items():
        p = sub.add_parser(name, help=helptext, description=helptext)
        if argv[:1] == [name]:
            modules[name] = importlib.import_module(modname)
            modules[name].add_arguments(p)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(modules[args.command].main(args) or 0)
    except (ValueError, FileNotFoundError) as e:      # bad input: a message, not a traceback
        print(f"workbench {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
