"""How another dataset's fields become a driver run: the mapping (docs/import-export.md).

A mapping names, for one source format, which image keys are the ``left`` (and ``right``) camera, which
fields are steering and throttle and how their values scale to run units (0..99, 49 neutral), how modes
become lab state codes, what deleted records become, where time comes from and when a gap splits a
segment. Each format has a default (:func:`default_mapping`); ``--mapping FILE`` (TOML or YAML) overrides
any part of it::

    [steer]
    field = "user/angle"
    range = [-1.0, 0.0, 1.0]   # source values that become run units 0, 49 and 99

Scaling is piecewise linear through those three points, so donkeycar's -1..1 angle lands exactly on
driver's 0..99 around 49 (the same map as ``driver.units.norm_to_run``); values beyond the ends are
clipped (and counted in the log).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import tomllib
from dataclasses import asdict, dataclass, field

import numpy as np

from .errors import ImportFormatError

log = logging.getLogger(__name__)

FORMATS = ("hdf5", "tub", "lerobot")
RUN_POINTS = (0.0, 49.0, 99.0)
DELETED_POLICIES = ("invalid", "drop")

# donkeycar's drive modes (parts/controller.py): who steers and who drives the motor
DONKEY_MODES = {"user": 1, "local_angle": 3, "local": 6}


@dataclass(frozen=True)
class ValueMap:
    """One scalar command: the source field (and element of a vector feature) and its scaling."""

    field: str
    index: int | None = None  # element of a vector feature (LeRobot ``action``)
    name: str | None = None  # or the element whose feature ``names`` entry is this ("a|b": the first found)
    range: tuple[float, float, float] = (-1.0, 0.0, 1.0)  # source values for run units 0, 49, 99

    def __post_init__(self):
        r = tuple(float(v) for v in self.range)
        if len(r) != 3 or not all(np.isfinite(r)):
            raise ValueError(f"range={list(self.range)} must be three finite numbers [low, neutral, high]")
        if not (r[0] < r[1] < r[2] or r[0] > r[1] > r[2]):
            raise ValueError(f"range={list(r)} must be strictly increasing or decreasing (low, neutral, high)")
        object.__setattr__(self, "range", r)

    def to_run(self, values: np.ndarray) -> tuple[np.ndarray, int]:
        """Source values to run units; returns them and how many were clipped to 0..99."""
        xp, fp = np.array(self.range), np.array(RUN_POINTS)
        if xp[0] > xp[-1]:
            xp, fp = xp[::-1], fp[::-1]
        v = np.asarray(values, dtype=np.float64)
        clipped = int(np.count_nonzero((v < xp[0]) | (v > xp[-1])))
        return np.interp(v, xp, fp), clipped


@dataclass(frozen=True)
class Mapping:
    """The whole mapping of one source format to the run format (defaults: :func:`default_mapping`)."""

    format: str
    left: str  # image key of the left camera; "auto" = the dataset's first camera
    right: str = ""  # image key of the right camera; "" = mono, "auto" = the one named like left but right
    steer: ValueMap = field(default_factory=lambda: ValueMap("user/angle"))
    motor: ValueMap = field(default_factory=lambda: ValueMap("user/throttle"))
    state_field: str = ""  # field holding the mode; "" = every record has ``state_default``
    state_codes: dict[str, int] = field(default_factory=dict)  # mode value -> lab state code
    state_default: int = 1  # state of records without (or with an unknown) mode
    time_field: str = "_timestamp_ms"
    time_scale: float = 0.001  # source time units -> seconds
    split_gap_s: float | None = None  # a larger gap starts a new segment; None = 5 frame periods
    segment_field: str = ""  # a field whose change starts a new segment ("" = none)
    deleted: str = "invalid"  # deleted records: "invalid" (kept, state deleted_state) or "drop" (a gap)
    deleted_state: int = -1  # the lab's error state: never valid
    labels: dict[str, int] = field(default_factory=dict)  # run labels given to every imported run
    extras: dict[str, str] = field(default_factory=dict)  # extra series name -> source field

    def __post_init__(self):
        if self.format not in FORMATS[1:]:
            raise ValueError(f"format={self.format!r} must be one of {', '.join(FORMATS[1:])}")
        if not self.left:
            raise ValueError("cameras.left is empty: name the image key of the left camera")
        if self.deleted not in DELETED_POLICIES:
            raise ValueError(f"records.deleted={self.deleted!r} must be one of {', '.join(DELETED_POLICIES)}")
        if not (np.isfinite(self.time_scale) and self.time_scale > 0):
            raise ValueError(f"time.scale={self.time_scale} must be a positive number (source units to seconds)")
        if self.split_gap_s is not None and not self.split_gap_s > 0:
            raise ValueError(f"time.split_gap_s={self.split_gap_s} must be > 0 seconds")
        bad = {k: v for k, v in self.labels.items() if v not in (0, 1)}
        if bad:
            raise ValueError(f"labels {bad} must be 0 or 1")

    def to_dict(self) -> dict:
        return asdict(self)

    def digest(self) -> str:
        """sha256 of the mapping: part of each imported run's fingerprint (a new mapping re-ingests)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


def default_mapping(fmt: str) -> Mapping:
    """The mapping used when no ``--mapping`` file is given."""
    if fmt == "tub":
        return Mapping(format="tub", left="cam/image_array", steer=ValueMap("user/angle"),
                       motor=ValueMap("user/throttle"), state_field="user/mode", state_codes=dict(DONKEY_MODES),
                       time_field="_timestamp_ms", time_scale=0.001)
    if fmt == "lerobot":
        return Mapping(format="lerobot", left="auto", right="auto",
                       steer=ValueMap("action", name="steer|steering|angle|steering_angle"),
                       motor=ValueMap("action", name="motor|throttle"), time_field="timestamp", time_scale=1.0)
    raise ValueError(f"format={fmt!r} has no mapping (formats with one: tub, lerobot)")


# ---- reading a mapping file ----

_SECTIONS = {"format", "cameras", "steer", "motor", "state", "time", "records", "labels", "extras"}


def _value_map(doc: dict, key: str, base: ValueMap, where: str) -> ValueMap:
    d = doc.get(key)
    if d is None:
        return base
    if not isinstance(d, dict):
        raise ImportFormatError(where, f"[{key}] must be a table with field, range, index or name")
    unknown = set(d) - {"field", "range", "index", "name"}
    if unknown:
        raise ImportFormatError(where, f"[{key}] has unknown keys {sorted(unknown)} (valid: field, range, index, name)")
    merged = {**asdict(base), **d}
    if "index" in d and "name" not in d:
        merged["name"] = None
    if "name" in d and "index" not in d:
        merged["index"] = None
    try:
        return ValueMap(field=str(merged["field"]), index=None if merged["index"] is None else int(merged["index"]),
                        name=merged["name"], range=tuple(merged["range"]))
    except (TypeError, ValueError) as e:
        raise ImportFormatError(where, f"[{key}]: {e}") from None


def _table(doc: dict, key: str, where: str) -> dict:
    d = doc.get(key, {})
    if not isinstance(d, dict):
        raise ImportFormatError(where, f"[{key}] must be a table")
    return d


def load_mapping(path: str | os.PathLike | None, fmt: str, base: Mapping | None = None) -> Mapping:
    """``base`` (default: the format's default mapping) overridden by the TOML/YAML file at ``path``."""
    base = base or default_mapping(fmt)
    if path is None:
        return base
    where = os.fspath(path)
    try:
        with open(where, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ImportFormatError(where, f"cannot read the mapping file: {e.strerror or e}") from None
    try:
        if where.lower().endswith((".yaml", ".yml")):
            import yaml

            doc = yaml.safe_load(raw) or {}
        else:
            doc = tomllib.loads(raw.decode("utf-8"))
    except Exception as e:  # noqa: BLE001 - any parse error of either library: one line naming the file
        raise ImportFormatError(where, f"not valid {'YAML' if where.endswith(('yaml', 'yml')) else 'TOML'}: "
                                f"{' '.join(str(e).split())}") from None
    if not isinstance(doc, dict):
        raise ImportFormatError(where, "a mapping file must be a table of sections (see docs/import-export.md)")
    unknown = set(doc) - _SECTIONS
    if unknown:
        raise ImportFormatError(where, f"unknown sections {sorted(unknown)} (valid: {', '.join(sorted(_SECTIONS))})")
    if doc.get("format", fmt) != fmt:
        raise ImportFormatError(where, f"format = {doc['format']!r} but the source is a {fmt} dataset")
    return _apply(base, doc, where)


def _apply(base: Mapping, doc: dict, where: str) -> Mapping:
    m = copy.deepcopy(asdict(base))
    cams, state, time_, records = (_table(doc, k, where) for k in ("cameras", "state", "time", "records"))
    for key, target in (("left", "left"), ("right", "right")):
        if key in cams:
            m[target] = str(cams[key])
    if "field" in state:
        m["state_field"] = str(state["field"])
    if "codes" in state:
        m["state_codes"] = {str(k): int(v) for k, v in dict(state["codes"]).items()}
    if "default" in state:
        m["state_default"] = int(state["default"])
    for key, target in (("field", "time_field"), ("scale", "time_scale"), ("split_gap_s", "split_gap_s"),
                        ("segment_field", "segment_field")):
        if key in time_:
            m[target] = time_[key]
    for key, target in (("deleted", "deleted"), ("deleted_state", "deleted_state")):
        if key in records:
            m[target] = records[key]
    if "labels" in doc:
        m["labels"] = {str(k): int(v) for k, v in _table(doc, "labels", where).items()}
    if "extras" in doc:
        m["extras"] = {str(k): str(v) for k, v in _table(doc, "extras", where).items()}
    m["steer"] = _value_map(doc, "steer", base.steer, where)
    m["motor"] = _value_map(doc, "motor", base.motor, where)
    try:
        return Mapping(**m)
    except (TypeError, ValueError) as e:
        raise ImportFormatError(where, str(e)) from None


def mapping_from_dict(d: dict) -> Mapping:
    """The inverse of :meth:`Mapping.to_dict` (a mapping carried inside an exported dataset)."""
    d = dict(d)
    d["steer"], d["motor"] = ValueMap(**d["steer"]), ValueMap(**d["motor"])
    return Mapping(**d)
