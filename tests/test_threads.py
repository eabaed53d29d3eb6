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


def test_physical_cores_counts_each_core_once():
    cpus = threads.usable_cpus()
    assert 1 <= threads.physical_cores(cpus) <= len(cpus)
    assert threads.physical_cores([10**6]) == 1  # no topology files: a CPU counts as a core


@pytest.mark.parametrize("bad", [-1, 257, 1.5, True, "2"])
def test_bad_thread_counts_name_the_range(bad):
    with pytest.raises(ValueError, match=r"threads=.* must be an integer in 0\.\.256"):
        threads.check_threads(bad)
