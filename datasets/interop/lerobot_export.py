"""``driver export-dataset STORE --to lerobot OUT``: a store as a LeRobot v3.0 dataset.

Each run becomes one episode. Written, as LeRobot's own writer lays them out (lerobot 0.4, codebase v3.0):

- ``meta/info.json``: ``features`` (cameras as ``observation.images.left``/``right`` videos, ``action`` =
  [steer, motor] in run units, the frame bookkeeping columns and driver's own ``driver.*`` columns), fps,
  totals, path templates, and a ``driver`` section holding the mapping that imports it back exactly;
- ``meta/stats.json``: min, max, mean, std, count and the 1/10/50/90/99 % quantiles of every feature
  (images per channel in [0, 1], from up to 100 sampled frames per episode, as LeRobot samples them);
- ``meta/tasks.parquet`` (a run's labels as its task, e.g. ``"direct"``), ``meta/episodes/...parquet``
  (lengths, data and video locations, per-episode stats, ``driver/run`` and ``driver/labels``);
- ``data/chunk-000/file-000.parquet`` (one row per frame) and ``videos/<camera>/chunk-000/file-000.mp4``
  (all episodes one after another at a constant fps; a new file past ``video_file_mb``).

Frame ``k`` of an episode is stamped ``k / fps`` as LeRobot requires; the recorded time is kept exactly in
``driver.timestamp``. The dataset is written to ``OUT.partial`` and renamed to ``OUT`` only when complete.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from driver.progress import Progress

from ..store import Store, StoreError
from .lerobot import _pq
from .mapping import Mapping, ValueMap

log = logging.getLogger(__name__)

CODEBASE_VERSION = "v3.0"
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-000/file-000.parquet"
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
VCODECS = ("libsvtav1", "libx264", "h264", "hevc", "libx265")
CAMERA_KEYS = {"left": "observation.images.left", "right": "observation.images.right"}
STAT_FRAMES = 100  # frames sampled per episode for image stats
BLOCK = 256


@dataclass
class LeRobotExportConfig:
    """What to export and how to encode it (defaults: LeRobot's own, libsvtav1 crf 30 with a keyframe every 2)."""

    store: str  # store path
    out: str  # new dataset folder
    runs: list[str] = field(default_factory=list)  # runs to export (empty: all)
    fps: int = 0  # dataset fps (0: the runs' median frame rate)
    vcodec: str = "libsvtav1"  # video codec (LeRobot's: libsvtav1)
    crf: int = 30  # video quality, lower is better (LeRobot's: 30)
    gop: int = 2  # frames between keyframes (LeRobot's: 2)
    robot_type: str = "driver_car"  # info.json robot_type
    video_file_mb: int = 200  # MB per video file before a new one starts
    progress: bool = False

    def __post_init__(self):
        if not 0 <= self.fps <= 1000:
            raise ValueError(f"fps={self.fps} must be in 1..1000 (0 = from the runs' timestamps)")
        if self.vcodec not in VCODECS:
            raise ValueError(f"vcodec={self.vcodec!r} must be one of {', '.join(VCODECS)}")
        if not 0 <= self.crf <= 63:
            raise ValueError(f"crf={self.crf} must be in 0..63")
        if not 1 <= self.gop <= 1000:
            raise ValueError(f"gop={self.gop} must be in 1..1000 frames")
        if not 1 <= self.video_file_mb <= 100000:
            raise ValueError(f"video_file_mb={self.video_file_mb} must be in 1..100000")


@dataclass
class LeRobotExportResult:
    path: str
    episodes: int
    frames: int
    fps: int
    bytes: int
    seconds: float


def _task(labels: dict) -> str:
    on = sorted(k for k, v in labels.items() if int(v))
    return ",".join(on) if on else "drive"


def _stats(x: np.ndarray, axis) -> dict:
    x = np.asarray(x, np.float64)
    keep = x.ndim == 1
    out = {"min": x.min(axis=axis, keepdims=keep), "max": x.max(axis=axis, keepdims=keep),
           "mean": x.mean(axis=axis, keepdims=keep), "std": x.std(axis=axis, keepdims=keep),
           "count": np.array([x.shape[0]])}
    for q in QUANTILES:
        out[f"q{int(round(q * 100)):02d}"] = np.quantile(x, q, axis=axis, keepdims=keep)
    return out


def _image_stats(frames: np.ndarray) -> dict:
    """Per-channel stats in [0, 1] with shape (3, 1, 1), as LeRobot computes them."""
    chw = frames.transpose(0, 3, 1, 2).astype(np.float64) / 255.0
    s = _stats(chw, axis=(0, 2, 3))
    return {k: (v if k == "count" else v.reshape(3, 1, 1)) for k, v in s.items()}


def _tolist(stats: dict) -> dict:
    return {k: {s: np.asarray(v).tolist() for s, v in d.items()} for k, d in stats.items()}


def _fps(store: Store, runs: list[str]) -> int:
    steps = np.concatenate([np.diff(store.series(r, "timestamp")) for r in runs])
    steps = steps[steps > 0]
    if not steps.size:
        raise ValueError("cannot tell the frame rate (no run has two frames): pass fps")
    return max(1, int(round(1.0 / float(np.median(steps)))))


def export_lerobot(config: LeRobotExportConfig) -> LeRobotExportResult:
    """Write the store's runs as a LeRobot v3.0 dataset at ``config.out`` (see the module docstring)."""
    t0 = time.perf_counter()
    store = Store(config.store)
    runs = list(config.runs) or store.runs
    missing = [r for r in runs if not store.has_run(r)]
    if missing or not runs:
        raise StoreError(f"{config.store}: runs {missing or []} not found (it has {store.runs or 'no runs'})")
    out = Path(config.out)
    if out.exists():
        raise ValueError(f"{out}: already exists; choose a new output folder (nothing was written)")
    metas = [store.run_meta(r) for r in runs]
    first = metas[0]
    for m in metas[1:]:
        if (m["height"], m["width"], m["cameras"]) != (first["height"], first["width"], first["cameras"]):
            raise ValueError(f"run {m['name']} is {m['height']}x{m['width']} {m['cameras']} but run {first['name']} "
                             f"is {first['height']}x{first['width']} {first['cameras']}: a LeRobot dataset has one "
                             "shape per camera; export them separately (--runs)")
        if [e["name"] for e in m["extras"]] != [e["name"] for e in first["extras"]]:
            raise ValueError(f"run {m['name']} has extra series {[e['name'] for e in m['extras']]} but run "
                             f"{first['name']} has {[e['name'] for e in first['extras']]}: export them separately")
    fps = config.fps or _fps(store, runs)
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        total = _write(store, runs, metas, partial, fps, config)
        os.replace(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    log.info("exported %d runs (%d frames) to %s: %.1f MB", len(runs), total, out, size / 1e6)
    return LeRobotExportResult(str(out), len(runs), total, fps, size, time.perf_counter() - t0)


def _features(first: dict, extras: list[dict]) -> dict:
    h, w = first["height"], first["width"]
    feats = {}
    for cam in first["cameras"]:
        feats[CAMERA_KEYS[cam]] = {"dtype": "video", "shape": [h, w, 3], "names": ["height", "width", "channels"]}
    feats["action"] = {"dtype": "float32", "shape": [2], "names": ["steer", "motor"]}
    width = sum(int(np.prod(e["shape"])) if e["shape"] else 1 for e in extras)
    if width:
        names = [e["name"] if not e["shape"] else f"{e['name']}_{i}" for e in extras
                 for i in range(int(np.prod(e["shape"])) if e["shape"] else 1)]
        feats["observation.state"] = {"dtype": "float32", "shape": [width], "names": names}
    for name, dtype in (("timestamp", "float32"), ("frame_index", "int64"), ("episode_index", "int64"),
                        ("index", "int64"), ("task_index", "int64"), ("driver.timestamp", "float64"),
                        ("driver.state", "int64"), ("driver.segment", "int64"), ("driver.valid", "bool")):
        feats[name] = {"dtype": dtype, "shape": [1], "names": None}
    for e in extras:
        dt = np.dtype(e["dtype"])
        feats[f"driver.extra.{e['name']}"] = {"dtype": "bool" if dt.kind == "b" else dt.name,
                                              "shape": list(e["shape"]) or [1], "names": None}
    return feats


def _mapping(first: dict, extras: list[dict]) -> Mapping:
    """The mapping that reads this export back into exactly the runs it came from."""
    run_units = (0.0, 49.0, 99.0)
    return Mapping(format="lerobot", left=CAMERA_KEYS["left"],
                   right=CAMERA_KEYS["right"] if "right" in first["cameras"] else "",
                   steer=ValueMap("action", index=0, range=run_units),
                   motor=ValueMap("action", index=1, range=run_units),
                   state_field="driver.state", time_field="driver.timestamp", time_scale=1.0, split_gap_s=1e9,
                   segment_field="driver.segment", extras={e["name"]: f"driver.extra.{e['name']}" for e in extras})


def _pa_column(values: np.ndarray, feature: dict):
    import pyarrow as pa

    dtype = pa.bool_() if feature["dtype"] == "bool" else pa.from_numpy_dtype(np.dtype(feature["dtype"]))
    if list(feature["shape"]) == [1]:
        return pa.array(values.reshape(-1), type=dtype)
    flat = values.reshape(len(values), -1)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1), type=dtype),
                                             type=pa.list_(pa.field("element", dtype), flat.shape[1]))


class _Videos:
    """One growing MP4 per camera; a new file once the current one passes ``video_file_mb``."""

    def __init__(self, root: Path, cameras: list[str], fps: int, h: int, w: int, config: LeRobotExportConfig):
        self.root, self.cameras, self.fps, self.h, self.w, self.config = root, cameras, fps, h, w, config
        self.file_index = dict.fromkeys(cameras, 0)
        self.writers: dict = {}

    def _path(self, cam: str) -> Path:
        return self.root / VIDEO_PATH.format(video_key=CAMERA_KEYS[cam], chunk_index=0, file_index=self.file_index[cam])

    def writer(self, cam: str):
        from .video import VideoWriter

        w = self.writers.get(cam)
        path = self._path(cam)
        if w is not None and path.exists() and path.stat().st_size > self.config.video_file_mb * 2**20:
            w.close()
            self.file_index[cam] += 1
            w = None
        if w is None:
            path = self._path(cam)
            path.parent.mkdir(parents=True, exist_ok=True)
            w = VideoWriter(str(path), self.fps, self.h, self.w, self.config.vcodec, self.config.crf, self.config.gop)
            self.writers[cam] = w
        return w

    def close(self) -> None:
        for w in self.writers.values():
            w.close()


def _write(store: Store, runs: list[str], metas: list[dict], root: Path, fps: int,
           config: LeRobotExportConfig) -> int:
    import pyarrow as pa

    pq = _pq()
    first, extras = metas[0], metas[0]["extras"]
    feats = _features(first, extras)
    videos = _Videos(root, list(first["cameras"]), fps, first["height"], first["width"], config)
    tasks: dict[str, int] = {}
    columns: dict[str, list[np.ndarray]] = {k: [] for k in feats if feats[k]["dtype"] != "video"}
    episodes, ep_stats, sampled = [], [], {cam: [] for cam in first["cameras"]}
    index = 0
    bar = Progress("export", total=sum(m["n_frames"] for m in metas), unit="frame", enabled=config.progress)
    try:
        for ep, (run, meta) in enumerate(zip(runs, metas, strict=True)):
            n = int(meta["n_frames"])
            task = _task(meta["labels"])
            tasks.setdefault(task, len(tasks))
            row = {"episode_index": ep, "tasks": [task], "length": n, "data/chunk_index": 0, "data/file_index": 0,
                   "dataset_from_index": index, "dataset_to_index": index + n}
            stats, pick = {}, np.unique(np.linspace(0, n - 1, min(n, STAT_FRAMES)).round().astype(int))
            for cam in meta["cameras"]:
                w = videos.writer(cam)
                start_s = w.frames / fps
                frames = store.frames(run, cam)
                samples = []
                for a in range(0, n, BLOCK):
                    block = frames.read(a, min(BLOCK, n - a))
                    w.write(block)
                    samples.append(block[pick[(pick >= a) & (pick < a + len(block))] - a])
                    if cam == meta["cameras"][0]:
                        bar.update(bar.done + len(block))
                key = CAMERA_KEYS[cam]
                row.update({f"videos/{key}/chunk_index": 0, f"videos/{key}/file_index": videos.file_index[cam],
                            f"videos/{key}/from_timestamp": start_s, f"videos/{key}/to_timestamp": w.frames / fps})
                samples = np.concatenate(samples)
                stats[key] = _image_stats(samples)
                sampled[cam].append(samples)
            data = _episode_columns(store, run, meta, feats, ep, index, tasks[task], fps)
            for k, v in data.items():
                columns[k].append(v)
                stats[k] = _stats(v.reshape(n, -1) if v.ndim > 1 else v, 0)
            row.update({"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0, "driver/run": run,
                        "driver/labels": json.dumps(meta["labels"], sort_keys=True)})
            row.update({f"stats/{k}/{s}": np.asarray(v).tolist() for k, d in stats.items() for s, v in d.items()})
            episodes.append(row)
            ep_stats.append(stats)
            index += n
    finally:
        videos.close()
        bar.close()
    table = pa.table({k: _pa_column(np.concatenate(v), feats[k]) for k, v in columns.items()})
    (root / DATA_PATH.format(chunk_index=0, file_index=0)).parent.mkdir(parents=True)
    pq.write_table(table, root / DATA_PATH.format(chunk_index=0, file_index=0), compression="snappy")
    (root / EPISODES_PATH).parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(episodes), root / EPISODES_PATH, compression="snappy")
    pq.write_table(_tasks_table(tasks), root / "meta/tasks.parquet")
    stats = {k: _stats(np.concatenate(v).reshape(index, -1) if feats[k]["shape"] != [1] else np.concatenate(v), 0)
             for k, v in columns.items()}
    stats.update({CAMERA_KEYS[cam]: _image_stats(np.concatenate(s)) for cam, s in sampled.items()})
    (root / "meta/stats.json").write_text(json.dumps(_tolist(stats), indent=4))
    for cam in first["cameras"]:
        feats[CAMERA_KEYS[cam]]["info"] = {
            "video.height": first["height"], "video.width": first["width"], "video.codec": _codec_name(config.vcodec),
            "video.pix_fmt": "yuv420p", "video.is_depth_map": False, "video.fps": fps, "video.channels": 3,
            "has_audio": False}
    info = {"codebase_version": CODEBASE_VERSION, "robot_type": config.robot_type, "total_episodes": len(runs),
            "total_frames": index, "total_tasks": len(tasks), "chunks_size": 1000, "data_files_size_in_mb": 100,
            "video_files_size_in_mb": config.video_file_mb, "fps": fps, "splits": {"train": f"0:{len(runs)}"},
            "data_path": DATA_PATH, "video_path": VIDEO_PATH, "features": feats,
            "driver": {"exported_from": str(Path(config.store).resolve()),
                       "mapping": _mapping(first, extras).to_dict()}}
    (root / "meta/info.json").write_text(json.dumps(info, indent=4))
    return index


def _tasks_table(tasks: dict[str, int]):
    """``meta/tasks.parquet`` as pandas writes it (LeRobot reads it with pandas: the task is the index)."""
    import pyarrow as pa

    pandas_meta = {
        "index_columns": ["__index_level_0__"],
        "column_indexes": [{"name": None, "field_name": None, "pandas_type": "unicode", "numpy_type": "object",
                            "metadata": {"encoding": "UTF-8"}}],
        "columns": [{"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64",
                     "metadata": None},
                    {"name": None, "field_name": "__index_level_0__", "pandas_type": "unicode",
                     "numpy_type": "object", "metadata": None}],
        "creator": {"library": "pyarrow", "version": pa.__version__}, "pandas_version": "2.2.0"}
    table = pa.table({"task_index": pa.array(list(tasks.values()), pa.int64()),
                      "__index_level_0__": pa.array(list(tasks), pa.string())})
    return table.replace_schema_metadata({"pandas": json.dumps(pandas_meta)})


def _codec_name(vcodec: str) -> str:
    return {"libsvtav1": "av1", "libx264": "h264", "libx265": "hevc"}.get(vcodec, vcodec)


def _episode_columns(store: Store, run: str, meta: dict, feats: dict, ep: int, index: int, task: int,
                     fps: int) -> dict[str, np.ndarray]:
    n = int(meta["n_frames"])
    k = np.arange(n)
    cols = {
        "action": np.stack([store.series(run, "steer"), store.series(run, "motor")], 1).astype(np.float32),
        "timestamp": (k / fps).astype(np.float32), "frame_index": k.astype(np.int64),
        "episode_index": np.full(n, ep, np.int64), "index": (index + k).astype(np.int64),
        "task_index": np.full(n, task, np.int64),
        "driver.timestamp": store.series(run, "timestamp").astype(np.float64),
        "driver.state": store.series(run, "state").astype(np.int64),
        "driver.segment": store.series(run, "segment").astype(np.int64),
        "driver.valid": store.series(run, "valid").astype(bool),
    }
    extras = [store.series(run, e["name"]) for e in meta["extras"]]
    for e, values in zip(meta["extras"], extras, strict=True):
        cols[f"driver.extra.{e['name']}"] = values
    if "observation.state" in feats:
        cols["observation.state"] = np.concatenate([v.reshape(n, -1).astype(np.float32) for v in extras], 1)
    return cols
