"""``DriveConfig`` (what ``driver drive`` is asked to do) and ``DriveReport`` (what happened)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

from driver.vehicle.link import DEFAULT_BAUD

from .camera import CameraConfig
from .limits import LimitsConfig
from .safety import SafetyConfig
from .timing import StageStats


@dataclass(frozen=True)
class DriveConfig:
    """One drive session. ``port`` empty is allowed only with ``camera="sim"`` (an in-process MCU).

    ``shadow``: never set AUTO_REQUEST, so the model can never drive (flipping the switch to AUTO then
    puts the MCU in FAILSAFE); for a first run of a new model. ``record_dir`` empty: record nothing.
    ``deadline_ms`` 0 means one frame period. ``threads``: torch intra-op threads (0 = torch's
    default; 1 is the safe choice on a small board, whose other cores run the grabber, the serial reader
    and the recorder — oversubscribed threads cost 50× on a loaded 2-core machine).
    """

    port: str = ""
    model: str = ""
    camera: str = "0"
    fps: float = 30.0
    width: int = 0
    height: int = 0
    fourcc: str = "MJPG"
    side_by_side: bool = False
    loop_video: bool = False
    mode: str = "direct"
    max_throttle: float = 0.3
    min_throttle: float = -1.0
    steer_slew_per_s: float = 8.0
    shadow: bool = False
    record_dir: str = "runs/drive"
    seconds: float = 0.0
    baud: int = DEFAULT_BAUD
    camera_timeout_ms: float = 250.0
    frozen_frames: int = 15
    max_lost_acks: int = 5
    ack_timeout_ms: float = 200.0
    deadline_ms: float = 0.0
    max_overruns: int = 10
    gap_frames: int = 3
    threads: int = 1
    warmup: int = 10
    status_every_s: float = 5.0
    device: str = "cpu"
    runtime: str = "torch"  # torch | onnx (ONNX Runtime on an exported or in-memory-exported model)
    view: str = ""  # Rerun live view (driver[view]): web[:PORT], spawn, FILE.rrd or rerun+http://HOST:PORT/proxy

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("model must name a checkpoint (best.pt / last.pt or a training run directory)")
        if not self.port and not self.camera.startswith("sim"):
            raise ValueError("port must name the MCU's serial device (e.g. /dev/ttyUSB0); only camera=sim runs "
                             "without one")
        if not (isinstance(self.seconds, int | float) and math.isfinite(self.seconds) and 0 <= self.seconds
                <= 86400):
            raise ValueError(f"seconds={self.seconds!r} must be in 0..86400 (0 = until stopped)")
        if not 0 <= self.threads <= 256:
            raise ValueError(f"threads={self.threads} must be in 0..256 (0 = torch's default)")
        if not 0 <= self.warmup <= 1000:
            raise ValueError(f"warmup={self.warmup} must be in 0..1000 passes")
        if not 0.1 <= self.status_every_s <= 3600:
            raise ValueError(f"status_every_s={self.status_every_s} must be in 0.1..3600 s")
        if self.baud <= 0:
            raise ValueError(f"baud={self.baud} must be positive")
        # the parts validate their own fields, with their own messages
        _ = (self.camera_config(stereo=False), self.limits, self.safety)

    def camera_config(self, stereo: bool) -> CameraConfig:
        return CameraConfig(self.camera, self.width, self.height, self.fps, self.fourcc, self.side_by_side,
                            stereo, self.loop_video)

    @property
    def limits(self) -> LimitsConfig:
        return LimitsConfig(self.max_throttle, self.min_throttle, self.steer_slew_per_s)

    @property
    def safety(self) -> SafetyConfig:
        deadline = self.deadline_ms or 1000.0 / self.fps
        return SafetyConfig(self.camera_timeout_ms, self.frozen_frames, self.max_lost_acks, self.ack_timeout_ms,
                            deadline, self.max_overruns, self.gap_frames)

    @classmethod
    def from_dict(cls, d: dict) -> DriveConfig:
        """From a dict (JSON/YAML); unknown keys are an error that lists the valid ones."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown DriveConfig keys {unknown}; valid: {sorted(names)}")
        return cls(**d)


@dataclass
class DriveReport:
    """The outcome: ``exit_code`` 0 for a clean stop, 1 for a fault; ``reason`` is the check that ended it."""

    exit_code: int = 0
    reason: str = ""
    message: str = ""
    seconds: float = 0.0
    ticks: int = 0
    model_ticks: int = 0  # ticks on which the MCU reported the model driving
    frames_grabbed: int = 0
    frames_skipped: int = 0
    commands_sent: int = 0
    acks: int = 0
    lost_acks: int = 0
    resets: dict[str, int] = field(default_factory=dict)
    run_path: str | None = None
    estop_state: str = ""
    timings: dict[str, StageStats] = field(default_factory=dict)

    @property
    def rate_hz(self) -> float:
        return self.ticks / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["rate_hz"] = self.rate_hz
        return d
