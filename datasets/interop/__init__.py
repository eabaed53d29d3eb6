"""Other datasets' formats: donkeycar tubs and LeRobot v3 datasets in (``driver ingest``), LeRobot v3 out
(``driver export-dataset``). See docs/import-export.md.

:func:`run_sources` turns the paths given to ``driver ingest`` into one :class:`RunSource` per run: an HDF5
file is one run, a tub folder one run per session, a LeRobot dataset folder one run per episode, and a
folder of any of these all of their runs.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ImportFormatError
from .mapping import FORMATS, Mapping, default_mapping, load_mapping
from .sources import Hdf5Source, ImportedSource, RunSource

__all__ = ["FORMATS", "ImportFormatError", "Mapping", "RunSource", "default_mapping", "detect_format",
           "load_mapping", "run_sources"]

RUN_SUFFIXES = (".h5", ".hdf5")


def detect_format(path: str | os.PathLike) -> str | None:
    """``hdf5``, ``tub`` or ``lerobot`` from what is at ``path``; None for a plain folder or unknown file."""
    from .lerobot import is_lerobot
    from .tub import is_tub

    p = Path(path)
    if p.is_dir():
        if is_tub(p):
            return "tub"
        if is_lerobot(p):
            return "lerobot"
        return None
    return "hdf5" if p.suffix.lower() in RUN_SUFFIXES or p.is_file() else None


def _dataset_sources(path: Path, fmt: str, mapping_file: str | None) -> list[RunSource]:
    if fmt == "hdf5":
        return [Hdf5Source(str(path))]
    try:
        if fmt == "tub":
            from .tub import tub_sources

            return tub_sources(path, load_mapping(mapping_file, "tub"))
        from .lerobot import lerobot_sources

        return lerobot_sources(path, mapping_file)
    except ImportFormatError as e:  # the mapping file itself is bad: every run of this dataset fails
        from ..store import run_name_for

        return [ImportedSource(str(path), run_name_for(path.resolve().name), fmt, error=str(e))]


def run_sources(paths: list[str], format: str = "auto", mapping: str | None = None) -> list[RunSource]:
    """The runs in ``paths`` (files, dataset folders or folders of them), in order.

    ``format`` forces how every path is read (``auto`` detects it per path); ``mapping`` is a TOML/YAML
    mapping file applied to the tub and LeRobot datasets among them.
    """
    if format != "auto" and format not in FORMATS:
        raise ValueError(f"format={format!r} must be auto or one of {', '.join(FORMATS)}")
    out: list[RunSource] = []
    for s in paths:
        p = Path(s)
        fmt = format if format != "auto" else detect_format(p)
        if fmt is not None and (fmt != "hdf5" or not p.is_dir()):
            out.extend(_dataset_sources(p, fmt, mapping))
        elif p.is_dir():
            for child in sorted(p.iterdir()):
                kind = detect_format(child)
                if kind == "hdf5" and child.suffix.lower() in RUN_SUFFIXES:
                    out.append(Hdf5Source(str(child)))
                elif kind in ("tub", "lerobot") and format in ("auto", kind):
                    out.extend(_dataset_sources(child, kind, mapping))
        else:
            out.append(Hdf5Source(str(p)))  # missing: reported as "no such file" by the plan
    return out
