"""Drive the simulator with a trained Policy: the model sees only the rendered pixels."""

from __future__ import annotations

import numpy as np

from driver.policy import Policy


class PolicyController:
    """Adapts :class:`driver.policy.Policy` to the closed-loop controller interface."""

    def __init__(self, policy: Policy, mode: str | None = "direct"):
        self.policy = policy
        self.mode = mode if mode in policy.modes else None
        self.latencies: list[float] = []

    def reset(self) -> None:
        self.policy.reset()

    def act(self, left: np.ndarray, right: np.ndarray | None) -> tuple[float, float]:
        action = self.policy.act(left, right=right if self.policy.stereo else None, mode=self.mode)
        self.latencies.append(action.latency_s)
        return action.steer_norm, action.motor_norm
