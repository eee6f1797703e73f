"""Command-line flags built from dataclasses: one flag per field, one help text and one list of
choices per field (kept in the field's metadata), for every ``workbench`` command.

A field declared with :func:`option` carries its help and choices. Nested dataclass fields (a
:class:`~workbench.engine.settings.EstimatorSettings` inside a config) are flattened into flags of
their own names. :func:`add_flags` adds the flags; :func:`given` reads back what the user set,
nested the same way, so a command builds its dataclasses with ``replace``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from typing import Any, Iterable, Optional

__all__ = ["option", "add_flags", "given", "flag_name", "name_value", "FieldType", "field_types"]


def option(default=dataclasses.MISSING, help: str = "", choices: Optional[Iterable] = None,
           *, default_factory=dataclasses.MISSING, flag: Optional[str] = None,
           kind: Optional[str] = None):
    """A dataclass field with its command-line help (``choices``: the accepted values;
    ``flag``: another flag name; ``kind="name_value"``: a repeatable ``NAME=VALUE`` flag that
    fills a dict)."""
    meta: dict[str, Any] = {"help": help}
    if choices is not None:
        meta["choices"] = tuple(choices)
    if flag is not None:
        meta["flag"] = flag
    if kind is not None:
        meta["kind"] = kind
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def flag_name(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def name_value(text: str) -> tuple:
    """``NAME=VALUE`` → ``(name, value)``, the value parsed as JSON where it is JSON."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    try:
        return name, json.loads(value)
    except json.JSONDecodeError:
        return name, value


@dataclasses.dataclass(frozen=True)
class FieldType:
    """A dataclass field's annotation, read once: ``Optional[X]`` → ``base`` X, ``optional``;
    ``tuple[X, ...]`` / ``list[X]`` → ``base`` X, ``sequence``."""
    base: Any
    optional: bool = False
    sequence: bool = False

    @classmethod
    def of(cls, hint) -> "FieldType":
        optional = False
        if typing.get_origin(hint) is typing.Union:
            args = typing.get_args(hint)
            optional = type(None) in args
            hint = next(a for a in args if a is not type(None))
        if typing.get_origin(hint) in (tuple, list):
            return cls(typing.get_args(hint)[0], optional, True)
        return cls(hint, optional)


def field_types(cls) -> dict[str, FieldType]:
    """``{field name: FieldType}`` of the dataclass ``cls`` — the one reader of its type hints
    (the flags here, the config's checks, a sweep's coercion of values)."""
    hints = typing.get_type_hints(cls)
    return {f.name: FieldType.of(hints[f.name]) for f in dataclasses.fields(cls)}


def _fields(cls):
    types = field_types(cls)
    for f in dataclasses.fields(cls):
        yield f, types[f.name]


def add_flags(parser, defaults, *, skip: Iterable[str] = (), suppress: bool = False,
              choices: Optional[dict] = None) -> None:
    """One flag per field of the dataclass instance ``defaults`` (nested dataclasses
    flattened), defaulting to its value — or, with ``suppress``, absent unless given (so that a
    caller can tell the flags given from the ones left out; the help still shows the default).
    ``skip``: field names that get no flag; ``choices``: overrides of a field's choices."""
    skip, choices = set(skip), choices or {}
    for f, ftype in _fields(type(defaults)):
        if f.name in skip:
            continue
        value = getattr(defaults, f.name)
        if dataclasses.is_dataclass(value):
            add_flags(parser, value, skip=skip, suppress=suppress, choices=choices)
            continue
        help_text = f.metadata.get("help", "")
        kw: dict[str, Any] = {"dest": f.name,
                              "default": argparse.SUPPRESS if suppress else value}
        shown = value if not isinstance(value, tuple) else " ".join(map(str, value))
        kw["help"] = f"{help_text} (default: {shown})".strip()
        base, many = ftype.base, ftype.sequence
        if f.metadata.get("kind") == "name_value":
            kw.update(action="append", type=name_value, metavar="NAME=VALUE")
            if not suppress:
                kw["default"] = None
        elif base is bool:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["type"] = base
            accepted = choices.get(f.name, f.metadata.get("choices"))
            if accepted is not None:
                kw["choices"] = accepted
            if many:
                kw["nargs"] = "+"
        parser.add_argument(flag_name(f), **kw)


def given(args: argparse.Namespace, cls, *, skip: Iterable[str] = ()) -> dict:
    """The values in ``args`` for the fields of ``cls`` (nested dataclasses as nested dicts,
    only where some field was given; ``name_value`` lists as dicts; tuples for lists)."""
    out: dict = {}
    skip = set(skip)
    for f, ftype in _fields(cls):
        if f.name in skip:
            continue
        nested = f.default_factory if f.default_factory is not dataclasses.MISSING else None
        sub = ftype.base
        if dataclasses.is_dataclass(sub) or (nested is not None
                                             and dataclasses.is_dataclass(nested())):
            inner = given(args, sub if dataclasses.is_dataclass(sub) else type(nested()),
                          skip=skip)
            if inner:
                out[f.name] = inner
            continue
        if not hasattr(args, f.name):
            continue
        value = getattr(args, f.name)
        if f.metadata.get("kind") == "name_value":
            value = dict(value or [])
        elif isinstance(value, list):
            value = tuple(value)
        out[f.name] = value
    return out
