"""The typed training configuration: defaults < config file (TOML/YAML) < command-line flags.

Every field is validated with a message naming the field and its valid range; the resolved config is
written into the run directory (``config.json``) and into every checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any


@dataclass
class TrainConfig:
    # data
    data: str = ""                      # store path or URL (s3://..., driver ingest output)
    cameras: str = "both"               # both | left | right
    stack: int = 2                      # 1, or 2 for the lab's previous+current frame stacking
    clip_length: int = 8                # T frames per training clip (TBPTT chunk for recurrent models)
    frame_stride: int = 1               # frames between clip steps
    horizon: int = 10                   # future (steer, motor) steps predicted
    target_stride: int = 3              # frames between target steps (3 = every 0.1 s at 30 fps)
    flip: float = 0.5                   # horizontal-flip augmentation probability
    color_jitter: float = 0.0           # lighting augmentation strength 0..1 (brightness, contrast, colour)
    include_labels: list[str] = field(default_factory=list)
    exclude_labels: list[str] = field(default_factory=lambda: ["reject_run"])
    val_fraction: float = 0.1           # share of runs held out (split by run)
    val_runs: list[str] = field(default_factory=list)  # explicit validation runs (overrides val_fraction)
    balance_steer: bool = True          # the lab's low/high steering balanced sampling (frame models)
    num_workers: int = 0                # DataLoader workers (0 is fastest on small CPU machines)
    # model
    arch: str = "squeezenet_lstm"
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    # optimisation
    optimizer: str = "adamw"            # adamw | sgd
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9               # sgd only
    schedule: str = "cosine"            # cosine | constant | step
    warmup_steps: int = 100
    batch_size: int = 32
    epochs: int = 10
    steps_per_epoch: int = 0            # 0 = one pass over the training clips
    loss: str = "mse"                   # mse | huber
    steer_weight: float = 1.0
    motor_weight: float = 0.5
    grad_clip: float = 1.0              # max gradient norm (0 = off)
    zero_state_prob: float = 0.25       # recurrent: chance a lane starts a chunk from zero state
    # evaluation and bookkeeping
    val_every: int = 0                  # steps between validations (0 = every epoch)
    checkpoint_every: int = 200         # steps between checkpoints (and at every validation)
    patience: int = 0                   # early stopping after this many validations without improvement
    out: str = "runs/train"             # parent folder of run directories
    name: str = ""                      # run directory name (default: arch + time)
    seed: int = 0
    device: str = "auto"                # auto | cpu | cuda
    precision: str = "auto"             # auto (bf16 on CPU, AMP on CUDA) | fp32 | bf16 | fp16
    channels_last: bool = True
    progress: bool = True

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        def rng(name, lo, hi):
            v = getattr(self, name)
            kind = int if isinstance(lo, int) and isinstance(hi, int) else int | float
            if isinstance(v, bool) or not isinstance(v, kind) or not lo <= v <= hi:
                what = "an integer" if kind is int else "a number"
                raise ValueError(f"{name}={v!r} must be {what} in {lo}..{hi}")

        def choice(name, options):
            if getattr(self, name) not in options:
                raise ValueError(f"{name}={getattr(self, name)!r} must be one of {', '.join(options)}")

        choice("cameras", ("both", "left", "right"))
        choice("optimizer", ("adamw", "sgd"))
        choice("schedule", ("cosine", "constant", "step"))
        choice("loss", ("mse", "huber"))
        choice("device", ("auto", "cpu", "cuda"))
        choice("precision", ("auto", "fp32", "bf16", "fp16"))
        for name, lo, hi in [("stack", 1, 2), ("clip_length", 1, 64), ("frame_stride", 1, 100), ("horizon", 1, 100),
                             ("target_stride", 1, 100), ("flip", 0.0, 1.0), ("color_jitter", 0.0, 1.0),
                             ("val_fraction", 0.0, 0.9),
                             ("num_workers", 0, 64), ("lr", 1e-8, 10.0), ("weight_decay", 0.0, 1.0),
                             ("momentum", 0.0, 1.0), ("warmup_steps", 0, 10**7), ("batch_size", 1, 65536),
                             ("epochs", 1, 10**5), ("steps_per_epoch", 0, 10**9), ("steer_weight", 0.0, 1e3),
                             ("motor_weight", 0.0, 1e3), ("grad_clip", 0.0, 1e6), ("zero_state_prob", 0.0, 1.0),
                             ("val_every", 0, 10**9), ("checkpoint_every", 1, 10**9), ("patience", 0, 10**6),
                             ("seed", 0, 2**31 - 1)]:
            rng(name, lo, hi)
        if not isinstance(self.arch_kwargs, dict):
            raise ValueError(f"arch_kwargs={self.arch_kwargs!r} must be a table/dict of architecture options")

    @property
    def camera_names(self) -> tuple[str, ...]:
        return ("left", "right") if self.cameras == "both" else (self.cameras,)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"{source}: unknown training option(s) {unknown}; valid: {sorted(known)}")
        return cls(**d)


def load_config_file(path: str | os.PathLike) -> dict:
    """Read a TOML (.toml) or YAML (.yaml/.yml) file of TrainConfig fields (a [train] table is allowed)."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{p}: config file not found")
    text = p.read_text(encoding="utf-8")
    if p.suffix == ".toml":
        import tomllib

        try:
            d = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{p}: invalid TOML: {e}") from e
    elif p.suffix in (".yaml", ".yml"):
        import yaml

        try:
            d = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"{p}: invalid YAML: {e}") from e
    else:
        raise ValueError(f"{p}: config files must be .toml, .yaml or .yml")
    if not isinstance(d, dict):
        raise ValueError(f"{p}: expected a table of options at the top level")
    return d.get("train", d)


def resolve_config(file: str | None, overrides: dict) -> TrainConfig:
    """Defaults, then the file, then explicit overrides (flags that were given)."""
    values: dict = {}
    if file:
        values.update(load_config_file(file))
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig.from_dict(values, source=file or "flags")


def write_config(config: TrainConfig, run_dir: Path) -> None:
    (run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2), encoding="utf-8")
