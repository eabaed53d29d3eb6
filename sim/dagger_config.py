"""The settings of `driver sim dagger` (:mod:`.dagger`), validated; light to import (the CLI builds its flags
from the fields and their comments)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DaggerConfig:
    model: str = ""              # starting checkpoint (best.pt/last.pt) or run folder of a driver train run
    data: str = ""               # the aggregate store (driver ingest output); the new runs are appended to it
    rounds: int = 3              # DAgger rounds
    out: str = "dagger_out"      # round runs, the resumed training run, dagger.json and the round table
    tracks: int = 4              # training tracks driven per round (new train-split seeds every round)
    seconds: float = 20.0        # seconds driven per track
    variants: list[int] = field(default_factory=list)  # training variant seeds, in turn (empty: each track's own)
    beta: float = 0.5            # round 1: chance per frame that the expert's command is executed
    beta_decay: float = 0.5      # beta_k = beta * beta_decay^(k-1)
    takeover: float = 0.7        # expert takes over past this share of half the road width (now or 0.8 s ahead)
    release: float = 0.3         # ... and hands back within this share of half the road width
    epochs_per_round: int = 1    # training epochs added per round (a resume of the training run)
    eval_tracks: int = 3         # held-out eval tracks driven after every round
    eval_variants: list[int] = field(default_factory=list)  # held-out eval variant seeds (empty: each track's own)
    eval_laps: float = 1.0       # laps per held-out track
    max_seconds: float = 60.0    # per held-out track
    fps: float = 30.0            # camera and control rate
    seed: int = 0                # first training track seed, the mixture draws and render noise
    jobs: int = 1                # runs ingested at once
    progress: bool = True        # training progress bar on a terminal

    def __post_init__(self):
        for name in ("variants", "eval_variants"):
            try:
                setattr(self, name, [int(v) for v in getattr(self, name) or []])
            except (TypeError, ValueError):
                raise ValueError(f"{name}={getattr(self, name)!r} must be integer seeds >= 0") from None
        if not self.model:
            raise ValueError("model is empty: name the checkpoint of a driver train run (its folder is resumed)")
        if not self.data:
            raise ValueError("data is empty: name the store the model was trained on (the aggregate)")
        for name, lo, hi in [("rounds", 1, 1000), ("tracks", 1, 10000), ("epochs_per_round", 1, 10**5),
                             ("eval_tracks", 1, 1000), ("seed", 0, 10**6), ("jobs", 1, 256)]:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise ValueError(f"{name}={v!r} must be an integer in {lo}..{hi}")
        for name, lo, hi in [("seconds", 1.0, 3600.0), ("beta", 0.0, 1.0), ("beta_decay", 0.0, 1.0),
                             ("takeover", 0.1, 1.0), ("release", 0.0, 1.0), ("eval_laps", 0.1, 100.0),
                             ("max_seconds", 1.0, 36000.0), ("fps", 10.001, 240.0)]:
            v = getattr(self, name)
            if not isinstance(v, int | float) or not lo <= v <= hi:
                raise ValueError(f"{name}={v!r} must be a number in {lo}..{hi}")
        if self.release >= self.takeover:
            raise ValueError(f"release={self.release} must be below takeover={self.takeover} (hand back only once "
                             "the car is nearer the centre than where the expert took over)")
        if any(v < 0 for v in self.variants + self.eval_variants):
            raise ValueError(f"variants={self.variants} and eval_variants={self.eval_variants} must be seeds >= 0")

    def beta_at(self, round_: int) -> float:
        """β of round ``round_`` (1-based)."""
        return self.beta * self.beta_decay ** (round_ - 1)


__all__ = ["DaggerConfig"]
