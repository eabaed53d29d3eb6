"""Drive the simulator with a trained Policy: the model sees the rendered pixels and, when it was trained with
speed input, the measured wheel speed."""

from __future__ import annotations

import inspect

import numpy as np

from driver.policy import Policy


class PolicyController:
    """Adapts :class:`driver.policy.Policy` to the closed-loop controller interface.

    ``act`` receives the wheel speed an encoder measures (``speed``, m/s) and passes it on as ``speed=``: a
    speed-input policy reads it, every other policy ignores it.
    """

    def __init__(self, policy: Policy, mode: str | None = "direct"):
        self.policy = policy
        self.mode = mode if mode in policy.modes else None
        self.latencies: list[float] = []
        self._pass_speed = "speed" in inspect.signature(policy.act).parameters

    def reset(self) -> None:
        self.policy.reset()

    def act(self, left: np.ndarray, right: np.ndarray | None, speed: float | None = None) -> tuple[float, float]:
        extra = {"speed": speed} if self._pass_speed else {}
        action = self.policy.act(left, right=right if self.policy.stereo else None, mode=self.mode, **extra)
        self.latencies.append(action.latency_s)
        return action.steer_norm, action.motor_norm
