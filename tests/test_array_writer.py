"""The direct writers write what zarr-python writes: every zarr.json document and every chunk, byte for byte
where zarr writes one, and zarr-python reads the result back."""

import json

import numpy as np
import pytest
import zarr

from driver.datasets import array_writer
from driver.datasets.layout import create_frames_array, create_series_array


def _doc(path):
    return json.loads((path / "zarr.json").read_text())


@pytest.mark.parametrize("codec", ["none", "lz4", "zstd"])
def test_frames_metadata_is_zarrs(tmp_path, codec):
    create_frames_array(zarr.open_group(tmp_path / "z", mode="w"), "left", 70, 6, 8, 32, codec)
    array_writer.write_frames_metadata(tmp_path / "d" / "left", 70, 6, 8, 32, codec)
    assert _doc(tmp_path / "d" / "left") == _doc(tmp_path / "z" / "left")


SERIES = {
    "steer": np.linspace(0, 99, 50, dtype=np.float32),
    "timestamp": np.arange(50, dtype=np.float64) / 30 + 1e9,
    "state": np.arange(50, dtype=np.int16) % 3,
    "segment": np.repeat(np.arange(5, dtype=np.int32), 10),
    "valid": np.arange(50) % 7 != 0,
    "gyro": np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32),
    "encoder": np.arange(50, dtype=">i8"),  # big-endian, as HDF5 may hold it
    "half": np.linspace(-1, 1, 50).astype(np.float16),
    "flags": np.arange(50, dtype=np.uint8),
    "empty": np.zeros(0, np.float32),
}


@pytest.mark.parametrize("name", sorted(SERIES))
def test_series_are_zarrs(tmp_path, name):
    data = SERIES[name]
    create_series_array(zarr.open_group(tmp_path / "z", mode="w"), name, data)
    assert array_writer.can_write_series(data)
    array_writer.write_series(tmp_path / "d" / name, data)
    z, d = tmp_path / "z" / name, tmp_path / "d" / name
    assert _doc(d) == _doc(z)
    zchunks = sorted(p.relative_to(z) for p in z.rglob("*") if p.is_file() and p.name != "zarr.json")
    for rel in zchunks:
        assert (d / rel).read_bytes() == (z / rel).read_bytes()
    got = zarr.open_array(d, mode="r")[...]
    assert got.dtype == np.dtype(data.dtype.name) and np.array_equal(got, data)


def test_groups_and_their_attributes_are_zarrs(tmp_path):
    attrs = {"driver_run": {"name": "r", "n_frames": 5, "labels": {"direct": 1}, "xs": [0, 1.5], "none": None}}
    g = zarr.open_group(tmp_path / "z", mode="w")
    g.attrs.update(attrs)
    array_writer.write_group(tmp_path / "d", attrs)
    assert _doc(tmp_path / "d") == _doc(tmp_path / "z")
    assert dict(zarr.open_group(tmp_path / "d", mode="r").attrs) == attrs
