"""What a car computer needs for a steady loop: CPU affinity, SCHED_FIFO where permitted, GC between ticks.

    with pinned(parse_cpus("2-3")), realtime_loop(True) as rt:   # before any of the drive's threads start
        ...                                # load the model, open the link, camera, recorder (their threads)
        with gc_between_ticks("between-ticks") as gc_tick:
            gc_tick()                      # after each tick's CMD is out: collect young objects off the hot path

Linux applies affinity and scheduling policy per thread and a new thread inherits them from its creator, so
both are entered before the serial reader, the camera grabber and the recorder start: all the drive's
threads share the CPUs and the SCHED_FIFO priority. All of them, not only the loop: the loop waits for the
GIL whichever thread holds it, and a holder at normal priority could be starved by other processes
meanwhile (priority inversion through the GIL). The kernel's real-time throttling (95% by default) keeps
the rest of the machine alive. Without the privilege for SCHED_FIFO (CAP_SYS_NICE, or an ``rtprio`` limit)
it says so in one line and carries on.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
from collections.abc import Callable, Iterator

log = logging.getLogger(__name__)

RT_PRIORITY = 50  # SCHED_FIFO priority of the drive (1..99): above ordinary threads, at kernel IRQ threads' level
GC_MODES = ("python", "between-ticks")
FULL_COLLECT_TICKS = 1000  # between-ticks: an oldest-generation collection this often


def parse_cpus(spec: str) -> set[int]:
    """``"2"``, ``"2,3"``, ``"0-1,3"`` → CPU numbers; ``""`` → empty (no pinning). Raises ValueError."""
    cpus: set[int] = set()
    for part in filter(None, (p.strip() for p in spec.split(","))):
        lo, sep, hi = part.partition("-")
        try:
            first, last = int(lo), int(hi) if sep else int(lo)
        except ValueError:
            raise ValueError(f"cpus={spec!r}: expected CPU numbers like 2 or 2,3 or 0-1") from None
        if not 0 <= first <= last < 4096:
            raise ValueError(f"cpus={spec!r}: {part!r} is not a CPU range")
        cpus.update(range(first, last + 1))
    return cpus


@contextlib.contextmanager
def pinned(cpus: set[int]) -> Iterator[list[int]]:
    """Pin the calling thread (and every thread it starts) to ``cpus``; yields them sorted ([] = no pinning)."""
    if not cpus:
        yield []
        return
    available = os.sched_getaffinity(0)
    if not cpus <= available:
        raise ValueError(f"cpus={','.join(map(str, sorted(cpus)))}: this process may run on CPUs "
                         f"{','.join(map(str, sorted(available)))} only")
    os.sched_setaffinity(0, cpus)
    log.info("drive pinned to CPU(s) %s", ",".join(map(str, sorted(cpus))))
    try:
        yield sorted(cpus)
    finally:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, available)


@contextlib.contextmanager
def realtime_loop(enabled: bool) -> Iterator[bool]:
    """Make the calling thread (and the threads it starts) SCHED_FIFO at :data:`RT_PRIORITY` if ``enabled`` and
    permitted.

    Yields whether it is; where not permitted, logs one line saying how to permit it and carries on.
    """
    if not enabled:
        yield False
        return
    try:
        old = (os.sched_getscheduler(0), os.sched_getparam(0))
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(RT_PRIORITY))
    except (OSError, AttributeError) as e:
        log.warning("--realtime: SCHED_FIFO is not permitted here (%s); the loop runs at normal priority. "
                    "Permit it with an rtprio limit (limits.conf: `USER - rtprio 60`) or "
                    "`setcap cap_sys_nice+ep` on the Python binary", getattr(e, "strerror", None) or e)
        yield False
        return
    log.info("drive loop runs SCHED_FIFO at priority %d", RT_PRIORITY)
    try:
        yield True
    finally:
        with contextlib.suppress(OSError):
            os.sched_setscheduler(0, old[0], old[1])


@contextlib.contextmanager
def gc_between_ticks(mode: str) -> Iterator[Callable[[], None]]:
    """``between-ticks``: freeze what exists (the model, the loaded modules), turn automatic collection off
    and yield a function the loop calls after each tick's CMD is sent (young generations every tick, the
    oldest every :data:`FULL_COLLECT_TICKS`). ``python``: Python's own collector; the function does nothing.
    Restores the collector on exit.
    """
    if mode not in GC_MODES:
        raise ValueError(f"gc={mode!r} must be one of {', '.join(GC_MODES)}")
    if mode == "python":
        yield lambda: None
        return
    was_enabled = gc.isenabled()
    gc.collect()
    gc.freeze()
    gc.disable()
    ticks = 0

    def tick() -> None:
        nonlocal ticks
        ticks += 1
        gc.collect(2 if ticks % FULL_COLLECT_TICKS == 0 else 1)

    try:
        yield tick
    finally:
        gc.unfreeze()
        if was_enabled:
            gc.enable()
