"""Command-line flags generated from typed config dataclasses: the dataclass is the one source of every
default and every help text.

One ``--flag`` per field (``max_throttle`` -> ``--max-throttle``); the help is the field's trailing
``# comment`` plus its default; a field without a default is a required option. Types map to argparse:
``bool`` -> ``--x/--no-x``, ``int``/``float``/``str`` -> one typed value, ``Literal[...]`` -> choices,
``list``/``tuple`` -> several values, ``dict`` -> ``KEY=VALUE`` pairs (or one JSON object), ``X | None`` -> X,
and a field whose type is itself a config dataclass adds that dataclass's flags (flat names, no prefix), so a
nested config (``IngestConfig.validity``) needs no flag of its own. Every flag's argparse default is None,
so :func:`given_values` / :func:`config_from_args` know which flags were given (a config file can then
sit between the dataclass defaults and the flags) and the dataclass fills in the rest.

Why our own ~200 lines and not tyro, jsonargparse or draccus: the command line was public before the
generator (docs, tests and users' scripts use flags such as ``--max-gap`` for ``max_gap_s``,
``--keep-pinned-steer`` for ``reject_pinned_steer=False`` and positional sources), and those libraries name
nested flags by path (``--validity.max-gap-s``) and import far more at start-up (``driver drive --help`` must
stay light on a car computer). The knobs below (``rename``, ``negate``, ``positional``, ``skip``,
``optional_value``, ``choices``, ``required``) keep every existing flag name without a second copy of a default.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import json
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping


@functools.cache
def field_comments(cls) -> dict[str, str]:
    """The ``# comment`` after each field in a config dataclass's source (and its bases'): the flag's help."""
    comments: dict[str, str] = {}
    for base in reversed(cls.__mro__[1:]):  # inherited fields keep their own class's comments
        if dataclasses.is_dataclass(base):
            comments.update(field_comments(base))
    last = None  # a comment-only line right after a commented field, indented past it, continues its comment
    indent = 0  # (one at the field's own indentation is a section heading)
    for line in inspect.getsource(cls).splitlines():
        m = re.match(r"(\s+)(\w+): [^#]+?#\s*(.+)$", line)
        if m:
            indent, last = len(m.group(1)), m.group(2)
            comments[last] = m.group(3).strip()
        elif last and line.strip().startswith("#") and len(line) - len(line.lstrip()) > indent:
            comments[last] += " " + line.strip().lstrip("#").strip()
        else:
            last = None
    return comments


@dataclasses.dataclass(frozen=True)
class FlagType:
    """What argparse needs to know about one field's type."""

    scalar: type = str  # the value type (of each element for list/tuple/dict values)
    container: type | None = None  # list, tuple or dict
    choices: tuple | None = None  # from Literal[...]
    nested: type | None = None  # a config dataclass whose fields become flags


def flag_type(hint) -> FlagType:
    """Map a resolved type hint to a :class:`FlagType` (``X | None`` is X; ``int | list[int]`` is the list)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        listy = [a for a in options if typing.get_origin(a) in (list, tuple)]
        return flag_type(listy[0] if listy else options[0])
    if origin is typing.Literal:
        return FlagType(scalar=type(args[0]), choices=tuple(args))
    if origin in (list, tuple):
        return FlagType(scalar=_scalar(args[0] if args else str), container=origin)
    if origin is dict:
        return FlagType(scalar=_scalar(args[1] if len(args) == 2 else str), container=dict)
    if dataclasses.is_dataclass(hint):
        return FlagType(nested=hint)
    return FlagType(scalar=_scalar(hint))


def _scalar(hint) -> type:
    return hint if hint in (bool, int, float, str) else object if hint is typing.Any else str


def field_default(f: dataclasses.Field):
    """A field's default value (calling its factory), or ``dataclasses.MISSING``."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _show(value) -> str:
    if isinstance(value, list | tuple):
        return " ".join(str(v) for v in value) if value else "none"
    return repr(value)


class _PairsAction(argparse.Action):
    """``KEY=VALUE ...`` (or one JSON object) into a dict; values cast with ``cast``."""

    def __init__(self, *args, cast: Callable = str, **kwargs):
        self.cast = cast
        super().__init__(*args, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        if len(values) == 1 and values[0].lstrip().startswith("{"):
            try:
                out = json.loads(values[0])
            except json.JSONDecodeError as e:
                raise argparse.ArgumentError(self, f"not valid JSON ({e}): {values[0]!r}") from None
            if not isinstance(out, dict):
                raise argparse.ArgumentError(self, f"{values[0]!r} must be a JSON object")
        else:
            out = {}
            for item in values:
                key, sep, value = item.partition("=")
                if not sep or not key:
                    raise argparse.ArgumentError(self, f"{item!r} must be KEY=VALUE")
                try:
                    out[key] = self.cast(value)
                except ValueError:
                    raise argparse.ArgumentError(self, f"{item!r}: {value!r} is not a valid value") from None
        setattr(namespace, self.dest, out)


def _json_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def add_config_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls, *,
                     skip: Iterable[str] = (), rename: Mapping[str, str] | None = None,
                     positional: Iterable[str] = (), negate: Mapping[str, str] | None = None,
                     optional_value: Mapping[str, str] | None = None,
                     choices: Mapping[str, tuple] | None = None, metavar: Mapping[str, str] | None = None,
                     notes: Mapping[str, str] | None = None, required: Iterable[str] = (),
                     required_unless: str = "", _prefix: str = "") -> None:
    """One flag per field of the config dataclass ``cls`` (and of the config dataclasses nested in it).

    ``skip``: fields that get no flag (set by the command itself); ``rename``: field -> flag name when it
    differs (``{"max_gap_s": "max-gap"}``); ``positional``: fields taken as positional arguments;
    ``negate``: bool field -> the name of a flag that sets it False (``{"reject_pinned_steer":
    "keep-pinned-steer"}``); ``optional_value``: field -> the value a bare ``--flag`` means; ``choices``
    and ``metavar`` as argparse's; ``notes``: field -> text added to its help (known only at run time, such
    as the registered architectures); ``required``: fields whose default (an empty string, say) the config
    refuses: their flag must be given and its help says "required" instead of showing that default;
    ``required_unless``: where else such a value may come from (``"in --config FILE"``): the help says so and
    argparse no longer insists (the config's own check does). The knobs apply to nested fields too, by field
    name.
    """
    rename, negate, optional_value = dict(rename or {}), dict(negate or {}), dict(optional_value or {})
    choices, metavar, skip, positional = dict(choices or {}), dict(metavar or {}), set(skip), set(positional)
    notes, required = dict(notes or {}), set(required)
    hints = typing.get_type_hints(cls)
    comments = field_comments(cls)
    own = set(vars(cls).get("__annotations__", {}))
    for f in sorted(dataclasses.fields(cls), key=lambda f: f.name not in own):  # own fields first, then inherited
        if f.name in skip or not f.init:
            continue
        kind = flag_type(hints[f.name])
        dest = _prefix + f.name
        if kind.nested:
            add_config_flags(parser, kind.nested, skip=skip, rename=rename, positional=positional, negate=negate,
                             optional_value=optional_value, choices=choices, metavar=metavar, notes=notes,
                             required=required, required_unless=required_unless, _prefix=dest + ".")
            continue
        default = field_default(f)
        about = "; ".join(x for x in (comments.get(f.name, ""), notes.get(f.name, "")) if x)
        if f.name in positional:
            text = about if default is dataclasses.MISSING else f"{about} (default: {_show(default)})"
            parser.add_argument(dest, nargs="*" if kind.container else None if default is dataclasses.MISSING
                                else "?", default=None, help=text.replace("%", "%%"),
                                metavar=metavar.get(f.name, f.name.upper()))
            continue
        flag = "--" + rename.get(f.name, f.name.replace("_", "-"))
        must = default is dataclasses.MISSING or f.name in required
        if must and required_unless and default is not dataclasses.MISSING:
            shown = f"required unless {required_unless}"
        else:
            shown = "required" if must else f"default: {_show(default)}"
        text = f"{about} ({shown})".strip().replace("%", "%%")
        common = {"dest": dest, "default": None, "help": text}
        if must and shown == "required":
            common["required"] = True
        if kind.scalar is bool and not kind.container:
            if f.name in negate:
                common["help"] = f"turns off: {about} (default: on)".replace("%", "%%")
                parser.add_argument("--" + negate[f.name], action="store_const", const=False, **common)
            else:
                parser.add_argument(flag, action=argparse.BooleanOptionalAction, **common)
        elif kind.container is dict:
            cast = _json_value if kind.scalar is object else kind.scalar
            parser.add_argument(flag, nargs="+", action=_PairsAction, cast=cast,
                                metavar=metavar.get(f.name, "KEY=VALUE"), **common)
        else:
            cast = _json_value if kind.scalar is object else kind.scalar
            extra = {}
            if kind.container:
                extra["nargs"] = "*"
            elif f.name in optional_value:
                extra.update(nargs="?", const=optional_value[f.name])
            options = choices.get(f.name, kind.choices)
            if options:
                extra["choices"] = options
            if not options:
                extra["metavar"] = metavar.get(f.name, "X" if kind.container else flag[2:].upper().replace("-", "_"))
            parser.add_argument(flag, type=cast, **extra, **common)


def given_values(args: argparse.Namespace, cls, _prefix: str = "") -> dict:
    """The fields of ``cls`` whose flags were given, as a (nested) dict of field -> value."""
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        kind = flag_type(hints[f.name])
        if kind.nested:
            inner = given_values(args, kind.nested, _prefix + f.name + ".")
            if inner:
                values[f.name] = inner
            continue
        value = getattr(args, _prefix + f.name, None)
        if value is not None:
            values[f.name] = tuple(value) if kind.container is tuple else value
    return values


def config_from_values(cls, values: Mapping):
    """``cls`` built from a (nested) dict of field values; fields not in it keep the dataclass defaults."""
    hints = typing.get_type_hints(cls)
    kwargs = dict(values)
    for f in dataclasses.fields(cls):
        nested = flag_type(hints[f.name]).nested
        if nested and isinstance(kwargs.get(f.name), Mapping):
            kwargs[f.name] = config_from_values(nested, kwargs[f.name])
    return cls(**kwargs)


def config_from_args(cls, args: argparse.Namespace, **fixed):
    """The config the command line asks for: the dataclass defaults, the flags given, then ``fixed``."""
    return config_from_values(cls, {**given_values(args, cls), **fixed})
