"""The one thread policy: explicit counts win, automatic counts never oversubscribe."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
    monkeypatch.setattr(threads, "busy_cpus_now", lambda cpus=None, interval=0.1: 0.3)
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (5.0, 5.0, 5.0))
    assert threads.machine_busy(cpus=8) is True
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (0.2, 0.2, 0.2))
    assert threads.machine_busy(cpus=8) is False
    monkeypatch.setattr(threads, "busy_cpus_now", lambda cpus=None, interval=0.1: 6.0)
    assert threads.machine_busy(cpus=8) is True  # busy right now, before the load average has caught up


def test_cpu_times_count_idle_and_iowait_as_not_busy():
    stat = ("cpu  300 0 100 1000 50 0 0 0 0 0\n"
            "cpu0 100 0 50 500 20 0 0 0 0 0\n"
            "cpu1 200 5 50 500 30 3 2 1 0 0\n"
            "intr 12345 0 0\nctxt 999\n")
    assert threads.cpu_times(stat, [0]) == (150, 670)
    assert threads.cpu_times(stat, [0, 1]) == (150 + 261, 670 + 791)
    assert threads.cpu_times(stat, [7]) == (0, 0)  # a CPU the file does not list adds nothing


@pytest.mark.skipif(not Path("/proc/stat").exists() or len(threads.usable_cpus()) > 8,
                    reason="needs Linux's /proc/stat and at most 8 usable CPUs (one spinning process each)")
def test_spinning_processes_make_the_machine_busy_at_once(monkeypatch):
    cpus = threads.usable_cpus()
    spin = "import sys; print('go', flush=True)\nwhile True: pass"
    procs = [subprocess.Popen([sys.executable, "-c", spin], stdout=subprocess.PIPE, text=True) for _ in cpus]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "go"
        assert threads.busy_cpus_now(interval=0.3) >= len(cpus) / 2  # others on the machine only add to it
        monkeypatch.setattr(threads.os, "getloadavg", lambda: (0.0, 0.0, 0.0))  # as a minute after an idle spell
        monkeypatch.setattr(threads, "physical_cores", lambda cpus=None: 8)
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        assert threads.machine_busy() is True
        assert threads.apply_threads(0) == 1
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_omp_num_threads_caps_the_automatic_count(monkeypatch):
    monkeypatch.setattr(threads, "physical_cores", lambda cpus=None: 8)
    monkeypatch.setattr(threads, "busy_reason", lambda cpus=None: None)
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
