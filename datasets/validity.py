"""The per-frame validity mask, computed as the lab did (seed_lineage.md §1b).

A frame is valid when its state is accepted, the throttle is at or above the threshold, the steering
is not pinned at an end in an autonomous state, and the next frame of its segment follows within
``max_gap_s``. An isolated one-frame state 4 (calibrate) is read as the state before it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

AUTONOMOUS_STATES = (3, 5, 6, 7)


@dataclass(frozen=True)
class ValidityRules:
    """Thresholds of the validity mask; recorded in the store and configurable at ingest."""

    accepted_states: tuple[int, ...] = (1, 3, 5, 6, 7)
    min_motor: float = 53.0
    max_gap_s: float = 0.1
    reject_pinned_steer: bool = True

    def __post_init__(self):
        if not self.accepted_states:
            raise ValueError("accepted_states must name at least one state code")
        if not 0.0 <= self.min_motor <= 99.0:
            raise ValueError(f"min_motor={self.min_motor} must be in 0..99 (run units)")
        if not self.max_gap_s > 0:
            raise ValueError(f"max_gap_s={self.max_gap_s} must be > 0 seconds")
        object.__setattr__(self, "accepted_states", tuple(int(s) for s in self.accepted_states))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["accepted_states"] = list(self.accepted_states)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ValidityRules:
        return cls(**{**d, "accepted_states": tuple(d["accepted_states"])})


def clean_state(state: np.ndarray) -> np.ndarray:
    """Round states to integers and overwrite an isolated one-frame state 4 with the state before it."""
    s = np.rint(state).astype(np.int16)
    if len(s) >= 3:
        lone4 = (s[1:-1] == 4) & (s[:-2] != 4) & (s[2:] != 4)
        idx = np.flatnonzero(lone4) + 1
        s[idx] = s[idx - 1]
    return s


def validity_mask(state: np.ndarray, steer: np.ndarray, motor: np.ndarray, timestamp: np.ndarray,
                  segment: np.ndarray, rules: ValidityRules = ValidityRules()) -> np.ndarray:
    """Boolean mask over frames (all arrays of one run, concatenated over segments)."""
    s = clean_state(state)
    ok = np.isin(s, rules.accepted_states) & (motor >= rules.min_motor)
    if rules.reject_pinned_steer:
        pinned = (steer <= 0.0) | (steer >= 99.0)
        ok &= ~(pinned & np.isin(s, AUTONOMOUS_STATES))
    gap_ok = np.ones(len(s), dtype=bool)
    same_segment = segment[1:] == segment[:-1]
    gap_ok[:-1] = ~same_segment | (np.diff(timestamp) < rules.max_gap_s)
    return ok & gap_ok
