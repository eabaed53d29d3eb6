"""The one atomic file writer: complete under the final name or not there at all, never a stray temp file."""

from __future__ import annotations

import pytest

from driver.atomic_write import atomic_path, write_atomic
from driver.datasets.run_writer import write_run
from driver.datasets.synthetic import synthetic_segments


def test_write_atomic_replaces_whole_and_makes_folders(tmp_path):
    target = tmp_path / "a" / "b" / "model.onnx"
    write_atomic(target, b"first")
    write_atomic(target, b"second", durable=False)
    assert target.read_bytes() == b"second"
    assert [p.name for p in target.parent.iterdir()] == ["model.onnx"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "best.pt"
    target.write_bytes(b"old checkpoint")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half a new one")
        raise RuntimeError("disk full")
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        tmp.write_bytes(b"half a new one")
        raise KeyboardInterrupt
    assert target.read_bytes() == b"old checkpoint"
    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"]


def test_write_run_is_atomic(tmp_path):
    segments = synthetic_segments(n_frames=5, height=8, width=8, seed=0)
    with pytest.raises(Exception):  # noqa: B017 - whatever h5py raises for an unwritable value
        write_run(tmp_path / "run.h5", [{**segments[0], "bad": object()}])
    assert list(tmp_path.iterdir()) == []
    write_run(tmp_path / "run.h5", segments)
    assert [p.name for p in tmp_path.iterdir()] == ["run.h5"]
