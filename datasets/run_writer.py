"""Write driving runs in the lab's HDF5 format (docs/run-format.md): the one format in and out."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import h5py
import numpy as np

from driver.atomic_write import atomic_path

from .run_format import CAMERAS, SERIES


def write_run(
    path: str | os.PathLike,
    segments: Sequence[Mapping[str, np.ndarray]],
    labels: Mapping[str, int] | None = None,
    attrs: Mapping[str, object] | None = None,
) -> str:
    """Write one run atomically (driver.atomic_write: a temporary file beside ``path``, renamed over it).

    Each segment maps ``left`` (N×H×W×3 uint8), optional ``right``, ``steer``, ``motor``, ``state``,
    ``left_timestamp`` and any extra per-frame series to arrays. Frames are stored chunked one frame
    per chunk, uncompressed, so runs stream back fast. Returns the path written.
    """
    path = os.fspath(path)
    with atomic_path(path) as partial, h5py.File(partial, "w") as f:
        for k, v in (attrs or {}).items():
            f.attrs[k] = v
        lab = f.create_group("labels")
        for name, value in (labels or {}).items():
            lab.create_dataset(name, data=np.array([int(value)], dtype=np.uint8))
        segs = f.create_group("segments")
        for i, seg in enumerate(segments):
            g = segs.create_group(str(i))
            for name, data in seg.items():
                data = np.asarray(data)
                if name in CAMERAS:
                    g.create_dataset(name, data=data, chunks=(1, *data.shape[1:]))
                elif name in SERIES:
                    g.create_dataset(name, data=data.astype(np.float64 if name == "left_timestamp" else np.float32))
                else:
                    g.create_dataset(name, data=data)
    return path
