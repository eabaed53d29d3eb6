"""What the MCU did that the host did not ask for, seen in every STATE the link receives.

Two things end a drive session as faults (the ``mcu_failsafe`` and ``mcu_mode_unknown`` checks of
:mod:`driver.vehicle.safety`): the MCU entering FAILSAFE while the host had not sent ESTOP (its command
watchdog fired, the receiver was lost, ...), and a STATE whose mode carlink does not define (a foreign or
broken firmware: treating it as MANUAL would mislabel the recording). Both link implementations feed
every STATE to a :class:`McuWatch` from their reader, so a FAILSAFE shorter than a tick is still seen.
"""

from __future__ import annotations

import threading

from driver.vehicle.carlink import Mode, State, StateFlags


def failsafe_reason(state: State, watchdog_ms: int | None) -> str:
    """Why the MCU says it is in FAILSAFE, from the STATE's flags, in words."""
    reasons = []
    if state.flags & StateFlags.HOST_TIMEOUT:
        wd = f"{watchdog_ms} ms " if watchdog_ms else ""
        reasons.append(f"no CMD asking to drive within its {wd}watchdog (HOST_TIMEOUT)")
    if state.flags & StateFlags.RC_LOST:
        reasons.append("RC receiver lost (RC_LOST)")
    # FAILSAFE latches; its cause's flag clears once CMDs flow again, which can happen before this STATE was sent
    return " and ".join(reasons) or ("latched without a host ESTOP: its command watchdog (CMDs lost or late) or a "
                                     "lost receiver, the flags cleared since")


class McuWatch:
    """Fed every STATE (``observe``); remembers the first unrequested FAILSAFE and the first unknown mode.

    A FAILSAFE counts when the MCU goes into it from MANUAL or AUTO before the host sent ESTOP
    (``estop_sent``); a FAILSAFE the MCU was already in when the link opened (boot, or latched by an
    earlier session) is not this session's doing and only ``pre_existing`` is set.
    """

    def __init__(self, watchdog_ms: int | None = None) -> None:
        self.watchdog_ms = watchdog_ms
        self.estop_sent = False
        self.failsafe = ""  # description of the first unrequested FAILSAFE, "" if none
        self.failsafe_count = 0
        self.unknown_mode = ""  # description of the first unknown mode, "" if none
        self.unknown_mode_count = 0
        self.pre_existing = False  # the first STATE already said FAILSAFE
        self._prev: Mode | None = None
        self._lock = threading.Lock()

    def observe(self, state: State) -> None:
        with self._lock:
            if not state.mode_known:
                self.unknown_mode_count += 1
                if not self.unknown_mode:
                    self.unknown_mode = (f"the MCU reported mode {state.mode}, which carlink does not define "
                                         f"(0 MANUAL, 1 AUTO, 2 FAILSAFE) at t_ms={state.t_ms}")
                return
            if self._prev is None and state.mode == Mode.FAILSAFE:
                self.pre_existing = True
            elif state.mode == Mode.FAILSAFE and self._prev in (Mode.MANUAL, Mode.AUTO) and not self.estop_sent:
                self.failsafe_count += 1
                if not self.failsafe:
                    self.failsafe = (f"the MCU went FAILSAFE from {self._prev.name} at t_ms={state.t_ms}: "
                                     f"{failsafe_reason(state, self.watchdog_ms)}")
            self._prev = state.mode

    def estop(self) -> None:
        """The host is sending ESTOP: FAILSAFE from now on is asked for."""
        with self._lock:
            self.estop_sent = True
