"""donkeycar tubs (tub v2, ``donkeycar/parts/tub_v2.py``): each session of a tub becomes one run.

A tub folder holds ``manifest.json`` (five JSON lines: inputs, types, metadata, manifest metadata with the
sessions, catalog metadata with the catalog paths and ``deleted_indexes``), ``catalog_<i>.catalog`` files
of one JSON record per line (``_index``, ``_session_id``, ``_timestamp_ms`` and the inputs, e.g.
``cam/image_array``, ``user/angle``, ``user/throttle``, ``user/mode``) and ``images/`` with one JPEG per
image input and record. Records are grouped by ``_session_id``; a corrupt catalog line, a missing field or
a missing image fails only the session it belongs to.
"""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from .errors import ImportFormatError
from .mapping import Mapping
from .sources import FrameReader, ImportedSource, RecordTable, build_run

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
IMAGES = "images"
IMAGE_TYPES = ("image_array", "image")
DECODE_THREADS = min(4, os.cpu_count() or 1)
_RGB_FLAG = getattr(cv2, "IMREAD_COLOR_RGB", None)  # OpenCV >= 4.10 decodes straight to RGB


def is_tub(path: str | os.PathLike) -> bool:
    return (Path(path) / MANIFEST).is_file()


def _manifest(tub: Path) -> dict:
    where = str(tub / MANIFEST)
    try:
        lines = (tub / MANIFEST).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ImportFormatError(where, f"cannot read: {e}") from None
    names = ("inputs", "types", "metadata", "manifest_metadata", "catalog_metadata")
    if len(lines) < len(names):
        raise ImportFormatError(where, f"has {len(lines)} lines, a tub v2 manifest has 5 (inputs, types, metadata, "
                                "manifest metadata, catalog metadata); is this a tub v1? convert it with "
                                "donkeycar's scripts/convert_to_tub_v2.py")
    doc = {}
    for i, name in enumerate(names):
        try:
            doc[name] = json.loads(lines[i])
        except json.JSONDecodeError as e:
            raise ImportFormatError(where, f"line {i + 1} ({name}) is not valid JSON: {e.msg}") from None
    cat = doc["catalog_metadata"]
    if not isinstance(cat, dict) or not isinstance(cat.get("paths"), list):
        raise ImportFormatError(where, "line 5 (catalog metadata) has no 'paths' list of catalogs")
    if len(doc["inputs"]) != len(doc["types"]):
        raise ImportFormatError(where, f"{len(doc['inputs'])} inputs but {len(doc['types'])} types")
    return doc


def _check_fields(tub: Path, doc: dict, mapping: Mapping) -> dict[str, str]:
    """The camera keys' types; every mapped field must be one of the tub's inputs."""
    where = str(tub / MANIFEST)
    types = dict(zip(doc["inputs"], doc["types"], strict=True))
    images = [k for k, t in types.items() if t in IMAGE_TYPES]
    for role, key in (("cameras.left", mapping.left), ("cameras.right", mapping.right)):
        if key and key not in types:
            raise ImportFormatError(where, f"image key {key!r} ({role}) is not one of the tub's inputs; its image "
                                    f"inputs are {images}")
        if key and types[key] not in IMAGE_TYPES:
            raise ImportFormatError(where, f"{key!r} ({role}) has type {types[key]!r}, not an image")
    fields = [("steer", mapping.steer.field), ("motor", mapping.motor.field)]
    fields += [("state", mapping.state_field)] if mapping.state_field else []
    fields += [(f"extras.{k}", v) for k, v in mapping.extras.items()]
    for role, key in fields:
        if key not in types:
            raise ImportFormatError(where, f"field {key!r} ({role}) is not one of the tub's inputs {doc['inputs']}")
    return types


def _read_catalogs(tub: Path, doc: dict) -> tuple[list[tuple[dict, str]], list[tuple[int, str]]]:
    """All records with where they come from, and the corrupt lines (their position among the records)."""
    records, corrupt = [], []
    for name in doc["catalog_metadata"]["paths"]:
        path = tub / name
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            corrupt.append((len(records), f"{path}: cannot read the catalog: {e}"))
            continue
        for line_no, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict):
                    raise ValueError("not a JSON object")
            except ValueError as e:
                corrupt.append((len(records), f"{path}: line {line_no} is not a valid record "
                                f"({' '.join(str(e).split())})"))
                continue
            records.append((rec, f"{path}: line {line_no}"))
    return records, corrupt


def tub_sources(path: str | os.PathLike, mapping: Mapping) -> list[ImportedSource]:
    """One source per session of the tub at ``path``; a tub that cannot be listed is one failed source."""
    tub = Path(path)
    name = tub.resolve().name
    try:
        doc = _manifest(tub)
        _check_fields(tub, doc, mapping)
    except ImportFormatError as e:
        return [ImportedSource(str(tub), _run_name(name, ""), "tub", mapping, error=str(e))]
    records, corrupt = _read_catalogs(tub, doc)
    deleted = {int(i) for i in doc["catalog_metadata"].get("deleted_indexes", [])}
    sessions: dict[str, list[tuple[dict, str]]] = {}
    order: list[str] = []
    for rec, where in records:
        sid = str(rec.get("_session_id", ""))
        if sid not in sessions:
            sessions[sid] = []
            order.append(sid)
        sessions[sid].append((rec, where))
    errors: dict[str, str] = {}
    for pos, message in corrupt:  # a corrupt line belongs to the session around it
        around = records[pos - 1] if pos > 0 else (records[pos] if pos < len(records) else None)
        sid = str(around[0].get("_session_id", "")) if around else ""
        errors.setdefault(sid, message)
        if sid not in sessions:
            sessions[sid], order = [], [*order, sid]
    catalogs = [str(tub / p) for p in doc["catalog_metadata"]["paths"]] + [str(tub / MANIFEST)]
    out = []
    for sid in order:
        recs = sessions[sid]
        images = [str(tub / IMAGES / str(r[key])) for r, _ in recs for key in (mapping.left, mapping.right)
                  if key and key in r]
        out.append(TubSource(
            path=str(tub), run=_run_name(name, sid), format="tub", mapping=mapping, files=catalogs + images,
            error=errors.get(sid, ""), detail={"session": sid, "records": len(recs)},
            records=[r for r, _ in recs], wheres=[w for _, w in recs],
            deleted=[int(r.get("_index", -1)) in deleted for r, _ in recs]))
    return out


def _run_name(tub_name: str, session: str) -> str:
    from ..store import run_name_for

    return run_name_for(f"{tub_name}_{session}" if session else tub_name)


class TubSource(ImportedSource):
    """One session of a tub."""

    def __init__(self, *, records: list[dict], wheres: list[str], deleted: list[bool], **kw):
        super().__init__(**kw)
        self.records, self.wheres, self.deleted = records, wheres, deleted

    def missing(self, path: str) -> str:
        name = os.path.basename(path)
        for r, where in zip(self.records, self.wheres, strict=True):
            if name in (str(r.get(self.mapping.left)), str(r.get(self.mapping.right))):
                return f"image of {where} is missing"
        return "file is missing"

    def content_key(self) -> str:
        lines = json.dumps([self.records, self.deleted], sort_keys=True)
        return f"{super().content_key()}:{lines}"

    def inspect(self):
        self.fail_if_broken()
        m, recs = self.mapping, self.records

        def column(key: str, role: str) -> list:
            out = []
            for i, r in enumerate(recs):
                if key not in r or r[key] is None:
                    raise ImportFormatError(self.wheres[i], f"record has no {key!r} ({role})")
                out.append(r[key])
            return out

        def numbers(key: str, role: str) -> np.ndarray:
            values = column(key, role)
            try:
                return np.asarray(values, dtype=np.float64)
            except (TypeError, ValueError):
                i = next(i for i, v in enumerate(values) if not isinstance(v, int | float))
                raise ImportFormatError(self.wheres[i], f"{key} = {values[i]!r} ({role}) is not a number") from None

        table = RecordTable(
            steer=numbers(m.steer.field, "steer"), motor=numbers(m.motor.field, "motor"),
            time=numbers(m.time_field, "time"), where=lambda i: self.wheres[i],
            mode=np.asarray(column(m.state_field, "state"), dtype=object) if m.state_field else None,
            deleted=np.asarray(self.deleted, bool),
            segment_key=np.asarray(column(m.segment_field, "segment"), dtype=object) if m.segment_field else None,
            extras={k: numbers(v, f"extras.{k}") for k, v in m.extras.items()})
        cameras = ("left", "right") if m.right else ("left",)
        keys = {"left": m.left, "right": m.right}
        files = {cam: [os.path.join(self.path, IMAGES, str(f)) for f in column(keys[cam], f"cameras.{cam}")]
                 for cam in cameras}
        height, width = _first_image_size(files["left"][0])
        reader = TubFrameReader(files, height, width)
        info, keep = build_run(self.path, table, m, cameras, height, width, reader, m.labels)
        reader.files = {cam: [f[i] for i in keep] for cam, f in files.items()}
        for cam, fs in reader.files.items():
            missing = next((i for i, f in enumerate(fs) if not os.path.isfile(f)), None)
            if missing is not None:
                raise ImportFormatError(fs[missing], f"image of {self.wheres[int(keep[missing])]} is missing "
                                        f"({keys[cam]})")
        return info


def _decode(path: str) -> np.ndarray | None:
    data = np.fromfile(path, np.uint8)
    if _RGB_FLAG is not None:
        return cv2.imdecode(data, _RGB_FLAG)
    img = cv2.imdecode(data, cv2.IMREAD_COLOR)
    return None if img is None else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _first_image_size(path: str) -> tuple[int, int]:
    if not os.path.isfile(path):
        raise ImportFormatError(path, "image is missing")
    img = _decode(path)
    if img is None:
        raise ImportFormatError(path, "not a readable image")
    return int(img.shape[0]), int(img.shape[1])


class TubFrameReader(FrameReader):
    """JPEG files decoded with OpenCV (libjpeg-turbo), a few at once in threads (decoding releases the GIL)."""

    def __init__(self, files: dict[str, list[str]], height: int, width: int):
        self.files, self.height, self.width = files, height, width
        self._pool: ThreadPoolExecutor | None = None

    def __getstate__(self):
        return {**self.__dict__, "_pool": None}

    def read(self, camera: str, start: int, count: int, out: np.ndarray) -> None:
        paths = self.files[camera][start:start + count]

        def one(j: int) -> None:
            img = _decode(paths[j])
            if img is None:
                raise ImportFormatError(paths[j], "not a readable image (corrupt or truncated JPEG?)")
            if img.shape != (self.height, self.width, 3):
                raise ImportFormatError(paths[j], f"image is {img.shape[0]}x{img.shape[1]} but the run's frames are "
                                        f"{self.height}x{self.width}")
            out[j] = img

        if self._pool is None:
            self._pool = ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="tub-decode")
        list(self._pool.map(one, range(len(paths))))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
