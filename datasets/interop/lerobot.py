"""LeRobot datasets (format v3.0, ``lerobot/datasets/lerobot_dataset.py``): each episode becomes one run.

A v3 dataset folder holds ``meta/info.json`` (``codebase_version``, ``fps``, ``features``, ``data_path`` and
``video_path`` templates), ``meta/episodes/chunk-*/file-*.parquet`` (one row per episode: ``length``,
``tasks``, ``data/chunk_index``, ``data/file_index``, and per camera ``videos/<key>/chunk_index``,
``file_index``, ``from_timestamp``, ``to_timestamp``), ``data/chunk-*/file-*.parquet`` (one row per frame,
one column per feature) and ``videos/<key>/chunk-*/file-*.mp4`` holding many episodes one after another.
Frame ``k`` of an episode is the video frame at ``from_timestamp + timestamp[k]``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from .errors import ImportFormatError
from .mapping import Mapping, ValueMap, load_mapping, mapping_from_dict
from .sources import FrameReader, ImportedSource, RecordTable, build_run

log = logging.getLogger(__name__)

INFO = "meta/info.json"
EPISODES = "meta/episodes"
SUPPORTED_MAJOR = "v3."
CAMERA_DTYPES = ("video", "image")


def is_lerobot(path: str | os.PathLike) -> bool:
    return (Path(path) / INFO).is_file()


def _pq():
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportFormatError("pyarrow", "is not installed: pip install 'driver[lerobot]' (or pip install "
                                "pyarrow) to read and write LeRobot datasets") from None
    return pq


def read_info(root: Path) -> dict:
    where = str(root / INFO)
    try:
        info = json.loads((root / INFO).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise ImportFormatError(where, f"cannot read: {e}") from None
    except json.JSONDecodeError as e:
        raise ImportFormatError(where, f"not valid JSON: {e.msg} (line {e.lineno})") from None
    version = str(info.get("codebase_version", "?"))
    if not version.startswith(SUPPORTED_MAJOR):
        hint = (" convert it with LeRobot's `python -m lerobot.datasets.v30.convert_dataset_v21_to_v30`"
                if version.startswith("v2") else "")
        raise ImportFormatError(where, f"codebase_version {version!r} is not supported (driver reads LeRobot "
                                f"v3.x datasets);{hint}" if hint else f"codebase_version {version!r} is not "
                                "supported (driver reads LeRobot v3.x datasets)")
    for key in ("fps", "features", "data_path"):
        if key not in info:
            raise ImportFormatError(where, f"has no {key!r}")
    return info


def _cameras(info: dict) -> list[str]:
    return [k for k, f in info["features"].items() if f.get("dtype") in CAMERA_DTYPES]


def _resolve_cameras(root: Path, info: dict, m: Mapping) -> tuple[str, str]:
    where, cams = str(root / INFO), _cameras(info)
    if not cams:
        raise ImportFormatError(where, "has no video or image features: nothing to use as the left camera")
    left = m.left
    if left == "auto":
        left = next((k for k in cams if k.endswith("left")), cams[0])
    right = m.right
    if right == "auto":
        right = next((k for k in cams if k.endswith("right") and k != left), "") if left.endswith("left") else ""
    for role, key in (("cameras.left", left), ("cameras.right", right)):
        if key and key not in cams:
            raise ImportFormatError(where, f"image key {key!r} ({role}) does not exist; the dataset's cameras are "
                                    f"{cams}")
    return left, right


def _names(feature: dict) -> list[str]:
    names = feature.get("names")
    if isinstance(names, dict) and len(names) == 1:
        names = next(iter(names.values()))
    return [str(n) for n in names] if isinstance(names, list) else []


def _column_index(root: Path, info: dict, vm: ValueMap, role: str) -> int | None:
    """Which element of the feature ``vm.field`` the value is (None: a scalar feature)."""
    where, feats = str(root / INFO), info["features"]
    if vm.field not in feats:
        raise ImportFormatError(where, f"feature {vm.field!r} ({role}) does not exist; features are "
                                f"{[k for k in feats if feats[k].get('dtype') not in CAMERA_DTYPES]}")
    f = feats[vm.field]
    size = int(np.prod(f.get("shape", [1])))
    if vm.name is not None:
        names = _names(f)
        found = [n for n in vm.name.split("|") if n in names]
        if not found:
            raise ImportFormatError(where, f"{vm.field} has no element named {vm.name!r} ({role}); its names are "
                                    f"{names or 'not given'}: set [{role}] index = N or name = ... in a --mapping file")
        return names.index(found[0])
    if vm.index is not None:
        if not 0 <= vm.index < size:
            raise ImportFormatError(where, f"{role} index {vm.index} is outside {vm.field}'s {size} elements")
        return vm.index
    return None if size == 1 else 0


def lerobot_sources(path: str | os.PathLike, mapping_file: str | None) -> list[ImportedSource]:
    """One source per episode of the LeRobot v3 dataset at ``path``; a dataset that cannot be listed fails as
    one source naming the file and field."""
    from ..store import run_name_for

    root = Path(path)
    name = root.resolve().name
    try:
        info = read_info(root)
        base = mapping_from_dict(info["driver"]["mapping"]) if isinstance(info.get("driver"), dict) else None
        mapping = load_mapping(mapping_file, "lerobot", base)
        left, right = _resolve_cameras(root, info, mapping)
        steer_i = _column_index(root, info, mapping.steer, "steer")
        motor_i = _column_index(root, info, mapping.motor, "motor")
        episodes = _read_episodes(root)
    except ImportFormatError as e:
        return [ImportedSource(str(root), run_name_for(name), "lerobot", error=str(e))]
    out = []
    for ep in episodes:
        idx = int(ep["episode_index"])
        run = run_name_for(ep.get("driver/run") or f"{name}_ep{idx:06d}")
        data = str(root / info["data_path"].format(chunk_index=int(ep["data/chunk_index"]),
                                                   file_index=int(ep["data/file_index"])))
        videos = {}
        for key in filter(None, (left, right)):
            if info["features"][key]["dtype"] == "video":
                videos[key] = str(root / info["video_path"].format(
                    video_key=key, chunk_index=int(ep[f"videos/{key}/chunk_index"]),
                    file_index=int(ep[f"videos/{key}/file_index"])))
        labels = json.loads(ep["driver/labels"]) if ep.get("driver/labels") else dict(mapping.labels)
        out.append(LeRobotSource(
            path=str(root), run=run, format="lerobot", mapping=mapping,
            files=[str(root / INFO), data, *videos.values()],
            detail={"episode_index": idx, "fps": info["fps"]},
            info=info, episode=ep, data_file=data, videos=videos, cameras=(left, right), labels=labels,
            columns=(steer_i, motor_i)))
    return out


def _read_episodes(root: Path) -> list[dict]:
    pq = _pq()
    files = sorted((root / EPISODES).glob("chunk-*/file-*.parquet"))
    if not files:
        raise ImportFormatError(str(root / EPISODES), "has no chunk-*/file-*.parquet: no episodes")
    rows = []
    for f in files:
        try:
            table = pq.read_table(f, columns=[c for c in pq.read_schema(f).names if not c.startswith("stats/")])
        except Exception as e:  # noqa: BLE001 - pyarrow raises several kinds for a damaged file
            raise ImportFormatError(str(f), f"not a readable parquet file: {e}") from None
        rows.extend(table.to_pylist())
    need = ("episode_index", "length", "data/chunk_index", "data/file_index")
    for r in rows:
        missing = [k for k in need if k not in r]
        if missing:
            raise ImportFormatError(str(files[0]), f"episode rows have no {missing} column")
    return sorted(rows, key=lambda r: int(r["episode_index"]))


class LeRobotSource(ImportedSource):
    """One episode of a LeRobot v3 dataset."""

    def __init__(self, *, info: dict, episode: dict, data_file: str, videos: dict[str, str], cameras: tuple[str, str],
                 labels: dict[str, int], columns: tuple[int | None, int | None], **kw):
        super().__init__(**kw)
        self.info, self.episode, self.data_file, self.videos = info, episode, data_file, videos
        self.camera_keys, self.labels, self.columns = cameras, labels, columns

    def missing(self, path: str) -> str:
        return "video file is missing" if path.endswith(".mp4") else "file is missing"

    def content_key(self) -> str:
        ep = {k: v for k, v in self.episode.items() if not k.startswith("stats/")}
        return f"{super().content_key()}:{json.dumps(ep, sort_keys=True, default=str)}"

    def _rows(self) -> dict[str, np.ndarray]:
        pq, m = _pq(), self.mapping
        feats = self.info["features"]
        wanted = {m.steer.field, m.motor.field, m.time_field, "timestamp", "frame_index", "episode_index"}
        wanted |= {c for c in (m.state_field, m.segment_field) if c} | set(m.extras.values())
        wanted |= {k for k in self.camera_keys if k and feats[k]["dtype"] == "image"}
        where = str(Path(self.path) / INFO)
        for c in sorted(wanted):
            if c not in feats:
                raise ImportFormatError(where, f"feature {c!r} (from the mapping) does not exist")
        if not os.path.isfile(self.data_file):
            raise ImportFormatError(self.data_file, "data file is missing")
        try:
            table = pq.read_table(self.data_file, columns=sorted(wanted),
                                  filters=[("episode_index", "=", int(self.episode["episode_index"]))])
        except Exception as e:  # noqa: BLE001 - pyarrow raises several kinds for a damaged file
            raise ImportFormatError(self.data_file, f"not a readable parquet file: {e}") from None
        table = table.sort_by("frame_index")
        n = int(self.episode["length"])
        if table.num_rows != n:
            raise ImportFormatError(self.data_file, f"has {table.num_rows} rows of episode "
                                    f"{self.episode['episode_index']}, its metadata says length {n}")
        return {c: table.column(c) for c in table.column_names}

    def inspect(self):
        self.fail_if_broken()
        m, feats = self.mapping, self.info["features"]
        rows = self._rows()

        def values(field: str, index: int | None) -> np.ndarray:
            col = rows[field].to_numpy(zero_copy_only=False)
            if col.dtype == object:  # list columns: (n,) of arrays
                col = np.stack(col)
            return col if index is None or col.ndim == 1 else col[:, index]

        first = int(rows["frame_index"][0].as_py()) if len(rows["frame_index"]) else 0

        def where(i: int) -> str:
            return f"{self.data_file}: episode {self.episode['episode_index']} frame {first + i}"

        table = RecordTable(
            steer=values(m.steer.field, self.columns[0]), motor=values(m.motor.field, self.columns[1]),
            time=values(m.time_field, None), where=where,
            mode=values(m.state_field, None) if m.state_field else None,
            segment_key=values(m.segment_field, None) if m.segment_field else None,
            extras={k: values(v, None) for k, v in m.extras.items()})
        left, right = self.camera_keys
        keys = {"left": left, **({"right": right} if right else {})}
        h, w = _frame_size(Path(self.path), feats[left], left)
        fps = float(self.info["fps"])
        video_times = values("timestamp", None).astype(np.float64)  # LeRobot's: seconds into the episode
        clips = {}
        for cam, key in keys.items():
            if feats[key]["dtype"] == "video":
                from .video import VideoClip

                clips[cam] = VideoClip(self.videos[key], float(self.episode[f"videos/{key}/from_timestamp"]),
                                       video_times, fps, h, w)
            else:
                clips[cam] = _ImageColumn(rows[key], self.data_file, h, w)
        reader = LeRobotFrameReader(clips)
        info, keep = build_run(self.path, table, m, tuple(keys), h, w, reader, self.labels)
        reader.keep = keep
        return info


def _frame_size(root: Path, feature: dict, key: str) -> tuple[int, int]:
    shape, names = list(feature.get("shape", [])), feature.get("names") or []
    if len(shape) != 3:
        raise ImportFormatError(str(root / INFO), f"{key} has shape {shape}, expected 3 dimensions")
    if list(names)[:1] in (["channels"], ["channel"]) or (shape[0] == 3 and shape[2] != 3):
        return int(shape[1]), int(shape[2])
    return int(shape[0]), int(shape[1])


class _ImageColumn:
    """Frames stored in the parquet file itself (``dtype: image``: PNG/JPEG bytes per row)."""

    def __init__(self, column, path: str, height: int, width: int):
        self.column, self.path, self.height, self.width = column, path, height, width

    def read(self, start: int, count: int, out: np.ndarray) -> None:
        import cv2

        for j in range(count):
            cell = self.column[start + j].as_py()
            data = cell.get("bytes") if isinstance(cell, dict) else cell
            img = cv2.imdecode(np.frombuffer(data or b"", np.uint8), cv2.IMREAD_COLOR) if data else None
            if img is None:
                raise ImportFormatError(self.path, f"image of row {start + j} is not readable")
            if img.shape != (self.height, self.width, 3):
                raise ImportFormatError(self.path, f"image of row {start + j} is {img.shape[0]}x{img.shape[1]}, "
                                        f"info.json says {self.height}x{self.width}")
            out[j] = img[..., ::-1]

    def close(self) -> None:
        pass


class LeRobotFrameReader(FrameReader):
    """Frames of the kept records, in order, from each camera's video clip (or image column)."""

    def __init__(self, clips: dict):
        self.clips, self.keep = clips, None

    def read(self, camera: str, start: int, count: int, out: np.ndarray) -> None:
        idx = self.keep[start:start + count]
        clip = self.clips[camera]
        if count and idx[-1] - idx[0] == count - 1:  # consecutive source frames: one read
            clip.read(int(idx[0]), count, out)
            return
        for j, i in enumerate(idx):
            clip.read(int(i), 1, out[j:j + 1])

    def close(self) -> None:
        for clip in self.clips.values():
            clip.close()
