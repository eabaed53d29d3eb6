"""Every bad-input case is rejected with one line naming the file and the field."""

import h5py
import numpy as np
import pytest

from driver.datasets.run_format import RunFormatError, inspect_run
from driver.datasets.run_writer import write_run


def _write_raw(path, segments, labels=None):
    with h5py.File(path, "w") as f:
        g = f.create_group("labels")
        for k, v in (labels or {"direct": 1}).items():
            g.create_dataset(k, data=np.array([v]))
        s = f.create_group("segments")
        for i, seg in enumerate(segments):
            sg = s.create_group(str(i))
            for k, v in seg.items():
                sg.create_dataset(k, data=v)
    return path


@pytest.mark.parametrize("shape", [(94, 168), (96, 96), (120, 160)])
@pytest.mark.parametrize("stereo", [True, False])
def test_valid_runs_of_every_shape(tmp_path, segments, shape, stereo):
    segs = segments(n_frames=40, height=shape[0], width=shape[1], stereo=stereo)
    info = inspect_run(write_run(tmp_path / "r.h5", segs, {"direct": 1}))
    assert (info.height, info.width) == shape
    assert info.stereo is stereo
    assert info.n_frames == 40 and [s.n_frames for s in info.segments] == [20, 20]
    assert [e.name for e in info.extras] == ["encoder", "gyro"]
    assert info.labels == {"direct": 1}


def _damage(name):
    def drop_steer(s):
        del s[0]["steer"]

    def short_motor(s):
        s[0]["motor"] = s[0]["motor"][:-1]

    def float_frames(s):
        s[0]["left"] = s[0]["left"].astype(np.float32)

    def four_channels(s):
        s[0]["left"] = np.concatenate([s[0]["left"], s[0]["left"][..., :1]], axis=-1)

    def nan_steer(s):
        s[1]["steer"][3] = np.nan

    def motor_out_of_range(s):
        s[0]["motor"][5] = 120.0

    def time_goes_back(s):
        s[0]["left_timestamp"][7] = s[0]["left_timestamp"][5]

    def empty_segment(s):
        for k in list(s[1]):
            s[1][k] = s[1][k][:0]

    def right_size_mismatch(s):
        s[0]["right"] = s[0]["right"][:, :-2]

    def extra_length(s):
        s[0]["encoder"] = s[0]["encoder"][:-3]

    def segments_overlap(s):
        s[1]["left_timestamp"] = s[1]["left_timestamp"] - 1000

    cases = {
        "drop_steer": (drop_steer, "segments/0 has no 'steer'"),
        "short_motor": (short_motor, "segments/0/motor has 19 values"),
        "float_frames": (float_frames, "segments/0/left has dtype float32"),
        "four_channels": (four_channels, "expected (N, H, W, 3)"),
        "nan_steer": (nan_steer, "segments/1/steer[3] is nan"),
        "motor_out_of_range": (motor_out_of_range, "segments/0/motor[5] = 120 is outside 0..99"),
        "time_goes_back": (time_goes_back, "left_timestamp is not increasing at frame 7"),
        "empty_segment": (empty_segment, "segments/1/left is empty"),
        "right_size_mismatch": (right_size_mismatch, "segments/0/right is 22x32 but the run's frames are 24x32"),
        "extra_length": (extra_length, "segments/0/encoder has 17 rows"),
        "segments_overlap": (segments_overlap, "segments/1 starts at"),
    }
    return cases[name]


@pytest.mark.parametrize("case", ["drop_steer", "short_motor", "float_frames", "four_channels", "nan_steer",
                                  "motor_out_of_range", "time_goes_back", "empty_segment",
                                  "right_size_mismatch", "extra_length", "segments_overlap"])
def test_bad_runs_name_file_and_field(tmp_path, segments, case):
    damage, expected = _damage(case)
    segs = segments(n_frames=40)
    damage(segs)
    path = _write_raw(tmp_path / f"{case}.h5", segs)
    with pytest.raises(RunFormatError) as e:
        inspect_run(path)
    msg = str(e.value)
    assert msg.startswith(str(path) + ": ")
    assert expected in msg
    assert "\n" not in msg


def test_not_hdf5_and_not_a_run(tmp_path):
    junk = tmp_path / "notes.h5"
    junk.write_text("these are my notes")
    with pytest.raises(RunFormatError, match="not an HDF5 file"):
        inspect_run(junk)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.create_dataset("weights", data=np.zeros(3))
    with pytest.raises(RunFormatError, match="no 'segments' group"):
        inspect_run(other)
    with h5py.File(other, "a") as f:
        f.create_group("segments")
    with pytest.raises(RunFormatError, match="'segments' group is empty"):
        inspect_run(other)
    with pytest.raises(RunFormatError, match="no such file"):
        inspect_run(tmp_path / "missing.h5")


def test_bad_label(tmp_path, segments):
    path = _write_raw(tmp_path / "r.h5", segments(n_frames=40), labels={"direct": 3})
    with pytest.raises(RunFormatError, match="labels/direct must be a single 0 or 1"):
        inspect_run(path)


def test_truncated_file(tmp_path, segments):
    path = tmp_path / "t.h5"
    write_run(path, segments(n_frames=60))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    with pytest.raises(RunFormatError) as e:
        inspect_run(path)
    assert str(e.value).startswith(str(path))
