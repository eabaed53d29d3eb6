"""One thread policy for every compute command (train, demo, compress, quantize, replay, sim).

Oversubscription is the classic way to lose a CPU machine: torch's default is one OpenMP thread per logical
CPU, and when other processes (DataLoader workers, a second job, CI neighbours) already use those CPUs the
threads spin-wait on each other. On a loaded 2-core machine a 5-step training took 127 s with torch's default
and 20 s with one thread. So ``driver`` chooses the count itself:

- ``--threads N`` (N >= 1) uses exactly N;
- ``--threads 0`` (the default) uses the physical cores this process may run on, minus one per DataLoader
  worker (they read and augment clips on cores of their own), and **1 when the machine is already busy**:
  other work uses at least half the usable CPUs, by the 1-minute load average or by the CPU time the usable
  CPUs spent busy over the first 0.1 s of the command (``/proc/stat``; the load average lags: 20 s after two
  busy processes started on a quiet 2-core machine it read 0.68, and a demo started then chose 2 threads and
  took 5.8x the wall time of a quiet run); a positive ``OMP_NUM_THREADS`` in the environment caps that
  automatic count (the usual way to say "at most N").

The chosen count is applied to torch (intra-op) and OpenCV, and handed to ONNX Runtime sessions by the
callers; it is logged once so a slow run can be explained. DataLoader worker processes get one thread each
(:func:`loader_worker_init`): they already run one per core.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)

MAX_THREADS = 256


def usable_cpus() -> list[int]:
    """The logical CPUs this process may run on (its affinity mask), sorted."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return list(range(os.cpu_count() or 1))


def physical_cores(cpus: list[int] | None = None) -> int:
    """Physical cores among ``cpus`` (default: the usable ones): hyper-threads of one core count once.

    Reads Linux's topology files; where they are missing, every logical CPU counts as a core.
    """
    cpus = usable_cpus() if cpus is None else cpus
    cores = set()
    for cpu in cpus:
        topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add((topo / "physical_package_id").read_text().strip() + ":" + (topo / "core_id").read_text().strip())
        except OSError:
            cores.add(f"cpu{cpu}")
    return max(1, len(cores))


def cpu_times(stat: str, cpus: list[int]) -> tuple[int, int]:
    """(busy, total) jiffies of ``cpus`` from the text of ``/proc/stat`` (idle and iowait count as not busy)."""
    busy = total = 0
    wanted = {f"cpu{c}" for c in cpus}
    for line in stat.splitlines():
        name, *fields = line.split()
        if name in wanted:
            ticks = [int(f) for f in fields[:8]]  # user nice system idle iowait irq softirq steal
            total += sum(ticks)
            busy += sum(ticks) - ticks[3] - ticks[4]
    return busy, total


def busy_cpus_now(cpus: list[int] | None = None, interval: float = 0.1) -> float | None:
    """How many of ``cpus`` (default: the usable ones) were busy, on average, over the next ``interval``
    seconds, this process sleeping meanwhile; None where ``/proc/stat`` is missing (not Linux)."""
    cpus = usable_cpus() if cpus is None else cpus
    try:
        before = cpu_times(Path("/proc/stat").read_text(), cpus)
        time.sleep(interval)
        after = cpu_times(Path("/proc/stat").read_text(), cpus)
    except (OSError, ValueError):
        return None
    spent = after[1] - before[1]
    return len(cpus) * (after[0] - before[0]) / spent if spent > 0 else None


def load_average() -> float | None:
    """The 1-minute load average; None where the system has none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def busy_reason(cpus: int | None = None) -> str | None:
    """Why the machine counts as busy (other work uses at least half the usable CPUs, by the 1-minute load
    average or by the CPUs busy right now), or None when it does not."""
    cpus = len(usable_cpus()) if cpus is None else cpus
    threshold = max(1.0, cpus / 2)
    load = load_average()
    if load is not None and load >= threshold:
        return f"busy: load average {load:.1f} of {cpus} CPUs"
    now = busy_cpus_now()
    return f"busy: {now:.1f} of {cpus} CPUs in use now" if now is not None and now >= threshold else None


def machine_busy(cpus: int | None = None) -> bool:
    """Is other work already using at least half of the usable CPUs (:func:`busy_reason`)?"""
    return busy_reason(cpus) is not None


def default_threads(workers: int = 0, busy: bool | None = None) -> int:
    """Threads for a compute command that also runs ``workers`` DataLoader worker processes."""
    busy = machine_busy() if busy is None else busy
    if busy:
        return 1
    return max(1, physical_cores() - max(0, workers))


def check_threads(threads: int, name: str = "threads") -> int:
    """Validate a ``--threads`` value: 0 (automatic) or 1..256."""
    if isinstance(threads, bool) or not isinstance(threads, int) or not 0 <= threads <= MAX_THREADS:
        raise ValueError(f"{name}={threads!r} must be an integer in 0..{MAX_THREADS} (0 = automatic: physical "
                         "cores minus DataLoader workers, 1 on a busy machine)")
    return threads


def environment_cap() -> int | None:
    """A positive integer ``OMP_NUM_THREADS``, the cap on the automatic count; None when unset or not one."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def apply_threads(threads: int = 0, workers: int = 0) -> int:
    """Resolve ``threads`` (0 = automatic, see the module docstring), apply it to torch and OpenCV, return it."""
    check_threads(threads)
    if threads:
        _set_threads(threads)
        log.info("compute threads: %d (as asked)", threads)
        return threads
    cap = environment_cap()
    reason = None if cap == 1 else busy_reason()  # (one thread either way: no need to sample the CPUs)
    n = min(default_threads(workers, busy=reason is not None), cap or MAX_THREADS)
    _set_threads(n)
    load = load_average()
    log.info("compute threads: %d (automatic: %d physical cores, %d loader workers, %s%s)", n, physical_cores(),
             workers, reason or ("no load average" if load is None else f"load {load:.1f}"),
             f", OMP_NUM_THREADS={cap}" if cap else "")
    return n


def loader_worker_init(worker_id: int) -> None:
    """``DataLoader(worker_init_fn=...)``: one torch and one OpenCV thread per worker process (the workers
    already run one per core; more threads each would oversubscribe the machine)."""
    _set_threads(1)


def _set_threads(n: int) -> None:
    """torch's intra-op and OpenCV's thread count, for whichever of them is installed (the car has no torch)."""
    try:
        import torch

        torch.set_num_threads(n)
    except ImportError:
        pass
    try:
        import cv2

        cv2.setNumThreads(n)
    except ImportError:
        pass
