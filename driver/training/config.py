"""The typed training configuration: defaults < config file (TOML/YAML) < command-line flags.

Every field is validated with a message naming the field and its valid range; the resolved config is
written into the run directory (``config.json``) and into every checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any


@dataclass
class TrainConfig:
    # data
    data: str = ""                      # store path or URL (s3://..., driver ingest output)
    cameras: str = "auto"               # auto (both when every run is stereo, else left) | both | left | right
    stack: int = 0                      # frames per step: 1, 2 (the lab's previous+current), 0 = auto (1 if recurrent)
    clip_seconds: float = 0.3           # clip (TBPTT chunk) length in seconds, at the store's frame rate
    horizon_seconds: float = 0.0        # seconds ahead of the last predicted step (0 = the current command only)
    target_stride_seconds: float = 0.1  # seconds between predicted steps
    clip_length: int = 0                # frames per clip; overrides clip_seconds when > 0
    frame_stride: int = 1               # frames between clip steps
    horizon: int = 0                    # predicted (steer, motor) steps; overrides horizon_seconds when > 0
    target_stride: int = 0              # frames between predicted steps; overrides target_stride_seconds when > 0
    flip: float = 0.5                   # horizontal-flip augmentation probability
    flip_scope: str = "auto"            # one flip draw per clip | run (per epoch) | auto (run if recurrent)
    color_jitter: float = 0.0           # lighting augmentation strength 0..1 (brightness, contrast, colour)
    include_labels: list[str] = field(default_factory=list)  # keep only runs with one of these labels
    exclude_labels: list[str] = field(default_factory=lambda: ["reject_run"])  # drop runs with these labels
    exclude_runs: list[str] = field(default_factory=list)  # drop these runs by name
    exclude_flagged: bool = True        # drop windows where the driver lost control (driver info --lint)
    val_fraction: float = 0.1           # share of runs held out (split by run)
    val_runs: list[str] = field(default_factory=list)  # explicit validation runs (overrides val_fraction)
    balance_steer: bool = True          # the lab's low/high steering balanced sampling (frame models)
    num_workers: int = 0                # DataLoader workers (0 is fastest on small CPU machines)
    threads: int = 0                    # compute threads (0 = auto: physical cores minus workers, 1 on a busy machine)
    # model
    arch: str = "squeezenet_gru"        # a model of driver models
    arch_kwargs: dict[str, Any] = field(default_factory=dict)  # architecture options as JSON, e.g. {"hidden_size": 64}
    speed_input: str = "off"            # car speed (m/s) as model input: off | on | auto (on if every run has one)
    # optimisation
    optimizer: str = "adamw"            # adamw | sgd
    lr: float = 0.0                     # base learning rate; 0 = auto, scaled with the batch and the input size
    weight_decay: float = 1e-4          # AdamW/SGD weight decay (not on biases and norms)
    momentum: float = 0.9               # sgd only
    schedule: str = "cosine"            # cosine | constant | step
    warmup_steps: int = -1              # linear warmup steps; -1 = auto (5% of the steps, at most 100)
    batch_size: int = 16                # clips per step (recurrent: lanes)
    epochs: int = 10                    # passes over the training clips
    steps_per_epoch: int = 0            # 0 = one pass over the training clips
    budget: str = ""                    # wall-clock time on this machine, e.g. 20m or 1h30m: sizes steps and validation
    loss: str = "mse"                   # mse | huber
    steer_weight: float = 1.0           # loss weight of steering
    motor_weight: float = 0.5           # loss weight of throttle and brake
    throttle_excess_weight: float = 1.0  # motor loss x this where the model asks more throttle/less brake (1 = off)
    brake_weight: float = 1.0           # motor loss x this where the label brakes (below neutral; 1 = off)
    target_norm: bool = True            # weigh each target's loss by 1/variance of its labels; start at their mean
    loss_balance: bool = True           # also weigh each target by 1/its running error ratio (the score's balance)
    grad_clip: float = 1.0              # max gradient norm (0 = off)
    frame_loss: float = 0.0             # recurrent: weight of a loss on a linear head that predicts the targets
                                        # from each frame's encoder features alone (0 = off; not used on the car)
    ema: float = 0.0                    # decay of a moving average of the weights, e.g. 0.999 (0 = off): the average
                                        # is validated, chosen and saved as the model (weight_average.py)
    teacher: str = ""                   # a checkpoint or ensemble manifest whose outputs join the targets (distill.py)
    teacher_weight: float = 0.5         # target = (1 - this) x the labels + this x the teacher's output (0..1)
    zero_state_prob: float = 0.05       # recurrent: chance a lane starts a chunk from zero state
    lane_jump: float = 0.0              # recurrent: chance a lane jumps to a new random clip (zero state) each step
    random_clip_epochs: int = 0         # recurrent: the first this many epochs draw independent random clips (zero
                                        # state each step, as frame models draw them) before the lanes walk the runs
    random_clip_share: float = 0.0      # recurrent: the same curriculum as a share of the training's epochs,
                                        # resolved into random_clip_epochs (re-planned with --budget until it ends)
    # evaluation and bookkeeping
    val_every: int = 0                  # steps between validations (0 = every epoch)
    val_clips: int = 1024               # at most this many held-out clips per validation
    precise_bn: int = 512               # training clips that recompute BatchNorm statistics before each validation
                                        # and the last checkpoint (0 = off; models without BatchNorm: nothing to do)
    checkpoint_every: int = 200         # steps between checkpoints (and at every validation)
    patience: int = 0                   # early stopping after this many validations without improvement
    eval_closed_loop: str = ""          # drive held-out sim tracks (count or seeds 1,4,7); best.pt by pace x autonomy
    every: int = 0                      # steps between closed-loop drives (0 = at each validation)
    eval_seconds: float = 30.0          # simulated seconds per closed-loop world (one lap at most)
    health_every: int = 50              # steps between per-layer activation and gradient statistics (0 = off)
    not_learning: str = "warn"          # warn | fail | off: model not beating the constant predictor, or blowing up
    learning_check_step: int = 0        # first step at which the learning check applies (0 = a quarter of the training)
    out: str = "runs/train"             # parent folder of run directories
    name: str = ""                      # run directory name (default: arch + time)
    seed: int = 0                       # split, plans, flips, init
    device: str = "auto"                # auto | cpu | cuda
    precision: str = "auto"             # auto (bf16 on CPU, AMP on CUDA) | fp32 | bf16 | fp16
    channels_last: bool = True          # channels-last model and inputs
    progress: bool = True               # a progress bar on a terminal, else a progress line every 30 s

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

        choice("cameras", ("auto", "both", "left", "right"))
        choice("optimizer", ("adamw", "sgd"))
        choice("schedule", ("cosine", "constant", "step"))
        choice("loss", ("mse", "huber"))
        choice("device", ("auto", "cpu", "cuda"))
        choice("precision", ("auto", "fp32", "bf16", "fp16"))
        choice("not_learning", ("warn", "fail", "off"))
        choice("speed_input", ("auto", "on", "off"))
        choice("flip_scope", ("auto", "clip", "run"))
        for name, lo, hi in [("stack", 0, 2), ("clip_seconds", 0.0, 60.0), ("horizon_seconds", 0.0, 60.0),
                             ("target_stride_seconds", 0.001, 60.0), ("clip_length", 0, 64), ("frame_stride", 1, 100),
                             ("horizon", 0, 100), ("target_stride", 0, 100), ("flip", 0.0, 1.0),
                             ("color_jitter", 0.0, 1.0), ("val_fraction", 0.0, 0.9),
                             ("num_workers", 0, 64), ("threads", 0, 256), ("lr", 0.0, 10.0), ("weight_decay", 0.0, 1.0),
                             ("momentum", 0.0, 1.0), ("warmup_steps", -1, 10**7), ("batch_size", 1, 65536),
                             ("epochs", 1, 10**5), ("steps_per_epoch", 0, 10**9), ("steer_weight", 0.0, 1e3),
                             ("motor_weight", 0.0, 1e3), ("throttle_excess_weight", 1.0, 100.0),
                             ("brake_weight", 1.0, 100.0),
                             ("grad_clip", 0.0, 1e6), ("frame_loss", 0.0, 100.0), ("ema", 0.0, 0.99999),
                             ("teacher_weight", 0.0, 1.0), ("zero_state_prob", 0.0, 1.0), ("lane_jump", 0.0, 1.0),
                             ("random_clip_epochs", 0, 10**5), ("random_clip_share", 0.0, 1.0),
                             ("val_every", 0, 10**9), ("val_clips", 1, 10**7), ("checkpoint_every", 1, 10**9),
                             ("precise_bn", 0, 10**6),
                             ("patience", 0, 10**6), ("every", 0, 10**9), ("eval_seconds", 1.0, 3600.0),
                             ("health_every", 0, 10**9), ("learning_check_step", 0, 10**9), ("seed", 0, 2**31 - 1)]:
            rng(name, lo, hi)
        if self.clip_length == 0 and self.clip_seconds == 0:
            raise ValueError("clip_seconds=0 and clip_length=0: give the clip length in seconds (--clip-seconds) "
                             "or in frames (--clip-length)")
        if self.steer_weight + self.motor_weight <= 0:
            raise ValueError("steer_weight and motor_weight are both 0: nothing to learn")
        if not isinstance(self.teacher, str):
            raise ValueError(f"teacher={self.teacher!r} must be a path (a checkpoint or an ensemble manifest)")
        if self.teacher and self.teacher_weight == 0:
            raise ValueError(f"teacher={self.teacher!r} with teacher_weight=0 would ignore the teacher; give a "
                             "weight in (0, 1] or no teacher")
        if not isinstance(self.arch_kwargs, dict):
            raise ValueError(f"arch_kwargs={self.arch_kwargs!r} must be a table/dict of architecture options")
        if self.budget:
            parse_budget(self.budget)
        if self.eval_closed_loop:
            from driver.sim.model_choice import parse_tracks

            parse_tracks(self.eval_closed_loop)
        elif self.every:
            raise ValueError(f"every={self.every} needs eval_closed_loop (--eval-closed-loop TRACKS): it spaces "
                             "the closed-loop drives")

    @property
    def camera_names(self) -> tuple[str, ...]:
        """The cameras in view order; ``auto`` is resolved against the store first (training.recipe)."""
        if self.cameras == "auto":
            raise ValueError("cameras='auto' must be resolved against the store first (driver.training.recipe)")
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


def parse_budget(text: str) -> float:
    """Seconds in a budget such as ``20m``, ``1h30m``, ``90s`` or ``1.5h`` (a bare number is minutes)."""
    t = text.strip().lower().replace(" ", "")
    if re.fullmatch(r"\d+(\.\d+)?", t):
        t += "m"
    parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", t)
    if not parts or "".join(a + u for a, u in parts) != t:
        raise ValueError(f"budget={text!r} must be a duration such as 20m, 1h30m, 90s or 1.5h")
    seconds = sum(float(a) * {"h": 3600, "m": 60, "s": 1}[u] for a, u in parts)
    if not 10 <= seconds <= 30 * 86400:
        raise ValueError(f"budget={text!r} must be between 10 s and 30 days")
    return seconds


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
