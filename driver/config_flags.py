"""Command-line flags generated from a config dataclass: one ``--flag`` per field, help from its comment."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re


def field_comments(cls) -> dict[str, str]:
    """The ``# comment`` after each field in a config dataclass's source: the flag's help text."""
    comments = {}
    for line in inspect.getsource(cls).splitlines():
        m = re.match(r"\s+(\w+): [^=]+=.*?#\s*(.+)$", line)
        if m:
            comments[m.group(1)] = m.group(2).replace("%", "%%")
    return comments


def add_config_flags(parser: argparse.ArgumentParser, cls) -> None:
    """One flag per field of a config dataclass; only flags given on the command line override."""
    comments = field_comments(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        text = f"{comments.get(f.name, '')} (default: {default!r})".strip()
        if kind == "bool":
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=text)
        elif kind.startswith("list"):
            parser.add_argument(flag, dest=f.name, nargs="*", default=None, metavar="X", help=text)
        elif kind.startswith("dict"):
            parser.add_argument(flag, dest=f.name, default=None, metavar="JSON", help=text)
        else:
            parser.add_argument(flag, dest=f.name, default=None, help=text,
                                type={"int": int, "float": float}.get(kind, str))
