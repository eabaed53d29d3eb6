"""The per-frame validity mask: named rules, each removing the frames it rejects.

A frame is valid when no rule rejects it:

``state``
    its state is one of ``accepted_states`` (an isolated one-frame state 4, calibrate, is read as the state
    before it, as the lab did);
``stopped``
    the car is not parked: where the run has a speed series (``encoder``, else ``speed``), frames where
    ``|speed| <= stopped_speed`` and the throttle is not pushing forward (``motor <= 49 + neutral_band``)
    for at least ``stopped_seconds``; without one, stretches of neutral throttle (``|motor - 49| <=
    neutral_band``) of at least ``neutral_seconds``. Braking and coasting while the car moves are kept, and
    so are frames where a stopped car is being driven off;
``min_motor``
    the lab's rule ``motor >= min_motor`` (53 in the lab), off by default (0): it drops every braking and
    coasting frame;
``pinned_steer``
    the steering is not pinned at 0 or 99 in an autonomous state (3, 5, 6, 7);
``gap``
    the next frame of its segment follows within ``max_gap_s``.

:func:`rule_masks` returns what each rule rejects (``driver info`` counts them); :func:`validity_mask`
combines them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np

from .series import long_stretches

AUTONOMOUS_STATES = (3, 5, 6, 7)
NEUTRAL = 49.0
RULES = ("state", "stopped", "min_motor", "pinned_steer", "gap")


@dataclass(frozen=True)
class ValidityRules:
    """Thresholds of the validity mask; recorded in the store and configurable at ingest."""

    accepted_states: tuple[int, ...] = (1, 3, 5, 6, 7)  # state codes whose frames are valid
    min_motor: float = 0.0  # the lab's rule: valid frames need motor >= this; 53 drops every braking and coasting frame
                            # (0: off; parked-car frames are dropped by speed or long neutral stretches)
    max_gap_s: float = 0.1  # max seconds to the next frame
    reject_pinned_steer: bool = True  # reject autonomous frames with steering pinned at 0 or 99
    stopped_speed: float = 0.05  # speed (m/s) below which the car counts as stopped
    stopped_seconds: float = 0.5  # frames stopped longer than this are invalid
    neutral_band: float = 1.0  # motor within 49 ± this counts as neutral throttle (run units)
    neutral_seconds: float = 3.0  # frames in a neutral-throttle stretch longer than this are invalid

    def __post_init__(self):
        if not self.accepted_states:
            raise ValueError("accepted_states must name at least one state code")
        if not 0.0 <= self.min_motor <= 99.0:
            raise ValueError(f"min_motor={self.min_motor} must be in 0..99 (run units; 0 = off)")
        if not self.max_gap_s > 0:
            raise ValueError(f"max_gap_s={self.max_gap_s} must be > 0 seconds")
        if not self.stopped_speed >= 0:
            raise ValueError(f"stopped_speed={self.stopped_speed} must be >= 0 (speed series units)")
        if not 0.0 <= self.neutral_band <= 49.0:
            raise ValueError(f"neutral_band={self.neutral_band} must be in 0..49 run units")
        for name in ("stopped_seconds", "neutral_seconds"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}={getattr(self, name)} must be > 0 seconds")
        object.__setattr__(self, "accepted_states", tuple(int(s) for s in self.accepted_states))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["accepted_states"] = list(self.accepted_states)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ValidityRules:
        """Rules recorded in a store; fields a store predates take their defaults."""
        known = {f.name for f in fields(cls)}
        return cls(**{**{k: v for k, v in d.items() if k in known}, "accepted_states": tuple(d["accepted_states"])})


def clean_state(state: np.ndarray) -> np.ndarray:
    """Round states to integers and overwrite an isolated one-frame state 4 with the state before it."""
    s = np.rint(state).astype(np.int16)
    if len(s) >= 3:
        lone4 = (s[1:-1] == 4) & (s[:-2] != 4) & (s[2:] != 4)
        idx = np.flatnonzero(lone4) + 1
        s[idx] = s[idx - 1]
    return s


def stopped_mask(motor: np.ndarray, timestamp: np.ndarray, segment: np.ndarray, rules: ValidityRules,
                 speed: np.ndarray | None = None) -> np.ndarray:
    """Frames of a parked car (see the module docstring): by speed where known, else long neutral stretches."""
    motor = np.asarray(motor, dtype=np.float64)
    if speed is not None:
        idle = (np.abs(np.asarray(speed, dtype=np.float64)) <= rules.stopped_speed) & \
            (motor <= NEUTRAL + rules.neutral_band)
        return long_stretches(idle, segment, timestamp, rules.stopped_seconds)
    neutral = np.abs(motor - NEUTRAL) <= rules.neutral_band
    return long_stretches(neutral, segment, timestamp, rules.neutral_seconds)


def rule_masks(state: np.ndarray, steer: np.ndarray, motor: np.ndarray, timestamp: np.ndarray,
               segment: np.ndarray, rules: ValidityRules = ValidityRules(),
               speed: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """For each rule in :data:`RULES`, the frames it rejects (all arrays one run, concatenated over segments)."""
    s = clean_state(state)
    pinned = (steer <= 0.0) | (steer >= 99.0)
    gap = np.zeros(len(s), dtype=bool)
    same_segment = segment[1:] == segment[:-1]
    gap[:-1] = same_segment & (np.diff(timestamp) >= rules.max_gap_s)
    return {
        "state": ~np.isin(s, rules.accepted_states),
        "stopped": stopped_mask(motor, timestamp, segment, rules, speed),
        "min_motor": motor < rules.min_motor,
        "pinned_steer": pinned & np.isin(s, AUTONOMOUS_STATES) if rules.reject_pinned_steer else np.zeros_like(gap),
        "gap": gap,
    }


def validity_mask(state: np.ndarray, steer: np.ndarray, motor: np.ndarray, timestamp: np.ndarray,
                  segment: np.ndarray, rules: ValidityRules = ValidityRules(),
                  speed: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask over frames: true where no rule rejects the frame."""
    rejected = np.zeros(len(state), dtype=bool)
    for mask in rule_masks(state, steer, motor, timestamp, segment, rules, speed).values():
        rejected |= mask
    return ~rejected
