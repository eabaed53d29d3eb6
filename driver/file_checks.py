"""Bounded reads and schema checks shared by the loaders of every file driver reads.

Each loader (checkpoints, ``.onnx``, ``.dcz``, TorchScript, drive config files) checks a file's size before
reading it, a zip archive's declared sizes before a library unpacks it, an inflated size while inflating, and
every field it uses before using it, so a crafted or damaged file ends in one line that names the file and
the problem, in the loader's own error class, instead of a traceback or an exhausted memory. Torch-free.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

MiB = 1 << 20
GiB = 1 << 30
MAX_INFLATION = 100  # a deflated archive entry may declare this many times its stored size (+ 1 MiB)


def check_size(path: str | os.PathLike, limit: int, what: str, error: type[Exception]) -> int:
    """The size of the regular file ``path``; raises ``error`` if it is missing or over ``limit`` bytes."""
    p = Path(path)
    if not p.is_file():
        raise error(f"{p}: {what} not found")
    size = p.stat().st_size
    if size > limit:
        raise error(f"{p}: {size / MiB:.1f} MiB is more than a {what} may be ({limit / MiB:.0f} MiB)")
    return size


def read_bounded(path: str | os.PathLike, limit: int, what: str, error: type[Exception]) -> bytes:
    """The bytes of ``path`` after :func:`check_size` (read errors become ``error`` too)."""
    check_size(path, limit, what, error)
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise error(f"{path}: cannot read the {what}: {e.strerror or e}") from e


def check_zip(path: str | os.PathLike, limit: int, what: str, error: type[Exception], stored_only: bool = False,
              max_entries: int = 100_000) -> list[zipfile.ZipInfo]:
    """The entries of a zip archive (PyTorch checkpoints and TorchScript are zips), checked before unpacking.

    torch's reader allocates what an entry declares, so the declarations must fit the file: a stored entry's
    size is its size in the file, a deflated one inflates at most :data:`MAX_INFLATION` times, and all of them
    together are at most ``limit`` bytes. ``stored_only``: every entry must be stored uncompressed, as
    ``torch.save`` writes them (TorchScript deflates its code entries).
    """
    try:
        with zipfile.ZipFile(path) as z:
            entries = z.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError, NotImplementedError) as e:
        raise error(f"{path}: not a loadable {what} (not a zip archive: {e})") from None
    if len(entries) > max_entries:
        raise error(f"{path}: {len(entries)} archive entries; a {what} has at most {max_entries}")
    packed = [e.filename for e in entries if e.compress_type != zipfile.ZIP_STORED] if stored_only else []
    if packed:
        raise error(f"{path}: not a loadable {what} (compressed archive entry {packed[0]!r}; torch stores "
                    "entries uncompressed)")
    size = os.path.getsize(path)
    for e in entries:
        stored = e.compress_type == zipfile.ZIP_STORED
        if e.compress_size > size or (stored and e.file_size != e.compress_size) or (
                not stored and e.file_size > MAX_INFLATION * e.compress_size + MiB):
            raise error(f"{path}: not a loadable {what} (archive entry {e.filename[:80]!r} declares "
                        f"{e.file_size} bytes from {e.compress_size} in a {size}-byte file)")
    declared = sum(e.file_size for e in entries)
    if declared > limit:
        raise error(f"{path}: archive declares {declared / MiB:.0f} MiB, more than a {what} may hold "
                    f"({limit / MiB:.0f} MiB)")
    return entries


def inflate_bounded(data: bytes, limit: int, where: str, error: type[Exception]) -> bytes:
    """zlib-inflate ``data`` to at most ``limit`` bytes; more, or a broken stream, raises ``error``."""
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, limit)
        if inflater.unconsumed_tail:
            raise error(f"{where} inflates to more than {limit / MiB:.0f} MiB")
        out += inflater.flush()
    except zlib.error as e:
        raise error(f"{where} is not a valid zlib stream ({e})") from e
    if not inflater.eof:
        raise error(f"{where} is a truncated zlib stream")
    return out


def require(mapping: Any, key: str, kind: type | tuple[type, ...], where: str, error: type[Exception]) -> Any:
    """``mapping[key]`` if ``mapping`` is a mapping holding ``key`` of type ``kind`` (bool is not an int)."""
    if not isinstance(mapping, Mapping):
        raise error(f"{where}: expected a table, found {type(mapping).__name__}")
    if key not in mapping:
        raise error(f"{where}: missing {key!r}")
    value = mapping[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise error(f"{where}: {key!r} must be {names}, found {type(value).__name__} {_short(value)}")
    return value


def require_int(mapping: Any, key: str, lo: int, hi: int, where: str, error: type[Exception]) -> int:
    """``mapping[key]`` as an int in ``lo..hi``."""
    value = require(mapping, key, int, where, error)
    if not lo <= value <= hi:
        raise error(f"{where}: {key}={value} must be in {lo}..{hi}")
    return value


def require_str_list(mapping: Any, key: str, where: str, error: type[Exception], max_len: int = 1024
                     ) -> list[str]:
    """``mapping[key]`` as a list of at most ``max_len`` strings."""
    value = require(mapping, key, (list, tuple), where, error)
    if len(value) > max_len or not all(isinstance(v, str) for v in value):
        raise error(f"{where}: {key!r} must be a list of at most {max_len} strings, found {_short(value)}")
    return list(value)


def _short(value: Any, n: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


CONFIG_FILE_LIMIT = 1 * MiB


def read_config_file(path: str | os.PathLike, table: str, error: type[Exception] = ValueError) -> dict:
    """A TOML (.toml) or YAML (.yaml/.yml) file of options, as a dict; a ``[table]`` section is allowed.

    Bounded (1 MiB), parsed safely (``yaml.safe_load``: plain data only); the top level must be a table.
    Keys are not checked here: the config dataclass names the unknown ones.
    """
    p = Path(path)
    if p.suffix not in (".toml", ".yaml", ".yml"):
        raise error(f"{p}: config files must be .toml, .yaml or .yml")
    raw = read_bounded(p, CONFIG_FILE_LIMIT, "config file", error)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{p}: not UTF-8 text (byte {e.start})") from e
    if p.suffix == ".toml":
        import tomllib

        try:
            d = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise error(f"{p}: invalid TOML: {e}") from e
    else:
        import yaml

        try:
            d = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise error(f"{p}: invalid YAML: {' '.join(str(e).split())}") from e
        d = {} if d is None else d
    if not isinstance(d, dict):
        raise error(f"{p}: expected a table of options at the top level, found {type(d).__name__}")
    section = d.get(table, d)
    if not isinstance(section, dict):
        raise error(f"{p}: [{table}] must be a table of options")
    if any(not isinstance(k, str) for k in section):
        raise error(f"{p}: option names must be strings")
    return section
