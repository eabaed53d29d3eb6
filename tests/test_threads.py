"""The one thread policy: explicit counts win, automatic counts never oversubscribe."""

from __future__ import annotations

import pytest
import torch

from driver import threads


def test_explicit_threads_are_applied_and_returned():
    before = torch.get_num_threads()
    try:
        assert threads.apply_threads(1) == 1
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_automatic_threads_leave_cores_to_loader_workers(monkeypatch):
    monkeypatch.setattr(threads, "physical_cores", lambda cpus=None: 8)
    assert threads.default_threads(workers=0, busy=False) == 8
    assert threads.default_threads(workers=3, busy=False) == 5
    assert threads.default_threads(workers=20, busy=False) == 1


def test_a_busy_machine_gets_one_thread(monkeypatch):
    monkeypatch.setattr(threads, "physical_cores", lambda cpus=None: 8)
    assert threads.default_threads(workers=0, busy=True) == 1
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (5.0, 5.0, 5.0))
    assert threads.machine_busy(cpus=8) is True
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (0.2, 0.2, 0.2))
    assert threads.machine_busy(cpus=8) is False


def test_omp_num_threads_caps_the_automatic_count(monkeypatch):
    monkeypatch.setattr(threads, "physical_cores", lambda cpus=None: 8)
    monkeypatch.setattr(threads, "machine_busy", lambda cpus=None: False)
    before = torch.get_num_threads()
    try:
        for env, expected in (("3", 3), ("64", 8), ("0", 8), ("many", 8), ("", 8)):
            monkeypatch.setenv("OMP_NUM_THREADS", env)
            assert threads.apply_threads(0) == expected == torch.get_num_threads(), env
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert threads.apply_threads(4) == 4  # an explicit --threads wins over the environment
    finally:
        torch.set_num_threads(before)


def test_physical_cores_counts_each_core_once():
    cpus = threads.usable_cpus()
    assert 1 <= threads.physical_cores(cpus) <= len(cpus)
    assert threads.physical_cores([10**6]) == 1  # no topology files: a CPU counts as a core


@pytest.mark.parametrize("bad", [-1, 257, 1.5, True, "2"])
def test_bad_thread_counts_name_the_range(bad):
    with pytest.raises(ValueError, match=r"threads=.* must be an integer in 0\.\.256"):
        threads.check_threads(bad)


class _ThreadsInWorker(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, i):
        import cv2

        return torch.get_num_threads(), cv2.getNumThreads()


def test_loader_workers_get_one_thread_each():
    loader = torch.utils.data.DataLoader(_ThreadsInWorker(), batch_size=None, num_workers=1,
                                         worker_init_fn=threads.loader_worker_init)
    assert [tuple(int(x) for x in item) for item in loader] == [(1, 1), (1, 1)]


@pytest.mark.parametrize("argv", [
    ["demo", "--threads", "300"],
    ["train", "--data", "nowhere.zarr", "--threads", "300"],
    ["sim", "record", "--out", "x", "--threads", "300"],
    ["sim", "drive", "--model", "expert", "--threads", "300"],
    ["replay", "--model", "m.pt", "--data", "s.zarr", "--threads", "300"],
    ["compress", "m.pt", "--threads", "300"],
    ["quantize", "m.onnx", "--threads", "300"],
])
def test_every_compute_command_takes_threads_and_checks_the_range(argv, caplog, tmp_path, monkeypatch):
    from driver.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert "threads=300 must be an integer in 0..256" in caplog.text


def test_a_command_applies_its_threads_once_at_the_start(tmp_path, caplog):
    from driver.cli import main

    before = torch.get_num_threads()
    try:
        caplog.set_level("INFO")
        assert main(["sim", "record", "--out", str(tmp_path), "--runs", "1", "--seconds", "0.5", "--height", "24",
                     "--width", "32", "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1
        assert caplog.text.count("compute threads: 1 (as asked)") == 1
    finally:
        torch.set_num_threads(before)
