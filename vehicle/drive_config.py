"""``DriveConfig`` (what ``driver drive`` is asked to do) and ``DriveReport`` (what happened).

Every field's trailing comment is its ``driver drive --flag`` help (driver/config_flags.py). A car's settings
can live in one TOML/YAML file (``driver drive --config car.toml``, a ``[drive]`` table allowed); flags
override it.
"""

from __future__ import annotations

import math
import os
import typing
from dataclasses import asdict, dataclass, field, fields, replace

from driver.file_checks import read_config_file
from driver.vehicle.link import DEFAULT_BAUD

from .camera import CameraConfig
from .limits import LimitsConfig
from .realtime import GC_MODES, parse_cpus
from .safety import SafetyConfig
from .timing import StageStats

RUNTIMES = ("auto", "torch", "onnx")


@dataclass(frozen=True)
class DriveConfig(SafetyConfig, LimitsConfig, CameraConfig):
    """One drive session. ``port`` empty is allowed only with ``camera="sim"`` (an in-process MCU). The camera's,
    the host limits' and the failsafe checks' fields are :class:`CameraConfig`'s, :class:`LimitsConfig`'s and
    :class:`SafetyConfig`'s own, inherited (one flat set of options, each declared once) and checked by those
    classes.

    ``shadow``: never set AUTO_REQUEST, so the model can never drive (flipping the switch to AUTO then
    puts the MCU in FAILSAFE, which ends the session); for a first run of a new model. ``record_dir`` empty:
    record nothing. ``threads``: inference threads (1 is the safe choice on a small board, whose other cores
    run the grabber, the serial reader and the recorder: oversubscribed threads cost 50× on a loaded 2-core
    machine).
    """

    port: str = ""  # the MCU's serial port, e.g. /dev/ttyUSB0 (empty: only with --camera sim, an in-process MCU)
    model: str = ""  # checkpoint (best.pt / run dir), exported .onnx / .ts, compressed .dcz or ensemble .json
    mode: str = "direct"  # behavioural mode given to models that take one
    shadow: bool = False  # never ask to drive (AUTO_REQUEST clear): the model only runs and is recorded
    record_dir: str = "runs/drive"  # where each session is recorded as a run (empty: no recording)
    seconds: float = 0.0  # stop cleanly after this long (0: until Ctrl-C)
    baud: int = DEFAULT_BAUD  # serial baud rate
    threads: int = 1  # inference threads (0: the runtime's default)
    warmup: int = 10  # model passes on a blank frame before the link opens
    status_every_s: float = 5.0  # seconds between status lines
    device: str = "cpu"  # torch device (cpu, cuda): torch runtime only
    runtime: str = "auto"  # auto (ONNX Runtime for .onnx, else torch), torch or onnx
    cpus: str = ""  # pin the drive to these CPUs, e.g. 3 or 2,3 or 2-3 (empty: any)
    realtime: bool = False  # run the drive's threads SCHED_FIFO where permitted (says how to permit it where not)
    gc: str = "python"  # python (Python's own collector) or between-ticks (collect after each tick's CMD is out)
    wheel_m_per_tick: float = 0.0  # metres per encoder tick: read the wheel encoder (carlink v1.2) (0: off)
    view: str = ""  # Rerun live view (driver[view]): web[:PORT], spawn, FILE.rrd or rerun+http://HOST:PORT/proxy

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("model must name a checkpoint (best.pt / last.pt or a training run directory), an "
                             "exported .onnx / .ts, a compressed .dcz or an ensemble .json (driver ensemble)")
        if not self.port and not self.camera.startswith("sim"):
            raise ValueError("port must name the MCU's serial device (e.g. /dev/ttyUSB0); only camera=sim runs "
                             "without one")
        if not (isinstance(self.seconds, int | float) and math.isfinite(self.seconds) and 0 <= self.seconds
                <= 86400):
            raise ValueError(f"seconds={self.seconds!r} must be in 0..86400 (0 = until stopped)")
        if not 0 <= self.threads <= 256:
            raise ValueError(f"threads={self.threads} must be in 0..256 (0 = the runtime's default)")
        if not 0 <= self.warmup <= 1000:
            raise ValueError(f"warmup={self.warmup} must be in 0..1000 passes")
        if not 0.1 <= self.status_every_s <= 3600:
            raise ValueError(f"status_every_s={self.status_every_s} must be in 0.1..3600 s")
        if self.baud <= 0:
            raise ValueError(f"baud={self.baud} must be positive")
        if self.runtime not in RUNTIMES:
            raise ValueError(f"runtime={self.runtime!r} must be one of {', '.join(RUNTIMES)}")
        if not (isinstance(self.wheel_m_per_tick, int | float) and 0.0 <= self.wheel_m_per_tick <= 10.0):
            raise ValueError(f"wheel_m_per_tick={self.wheel_m_per_tick!r} must be in 0..10 metres per encoder tick "
                             "(0 = do not read the encoder)")
        if self.gc not in GC_MODES:
            raise ValueError(f"gc={self.gc!r} must be one of {', '.join(GC_MODES)}")
        parse_cpus(self.cpus)
        # the parts validate their own fields, with their own messages
        _ = (self.camera_config, self.limits, self.safety)

    @property
    def camera_config(self) -> CameraConfig:
        return _part(CameraConfig, self)

    @property
    def limits(self) -> LimitsConfig:
        return _part(LimitsConfig, self)

    @property
    def safety(self) -> SafetyConfig:
        """The checks' thresholds, ``deadline_ms`` 0 resolved to one frame period."""
        return replace(_part(SafetyConfig, self), deadline_ms=self.deadline_ms or 1000.0 / self.fps)

    @classmethod
    def from_dict(cls, d: dict, source: str = "DriveConfig") -> DriveConfig:
        """From a dict (a config file, flags); unknown keys and values of the wrong type name the key."""
        hints = typing.get_type_hints(cls)
        unknown = sorted(set(d) - set(hints))
        if unknown:
            raise ValueError(f"{source}: unknown drive options {unknown}; valid: {sorted(hints)}")
        values = {}
        for key, value in d.items():
            kind = hints[key]
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
                raise ValueError(f"{source}: {key}={value!r} must be {kind.__name__}")
            values[key] = value
        return cls(**values)

    @classmethod
    def from_file(cls, path: str | os.PathLike, overrides: dict | None = None) -> DriveConfig:
        """A car's config file (TOML/YAML, a ``[drive]`` table allowed), then ``overrides`` (flags given)."""
        values = read_config_file(path, "drive")
        values.update({k: v for k, v in (overrides or {}).items() if v is not None})
        try:
            return cls.from_dict(values, source=str(path))
        except ValueError as e:  # a field's own range check: say which file it came from
            raise ValueError(str(e) if str(e).startswith(str(path)) else f"{path}: {e}") from None


def _part(cls, config: DriveConfig):
    """The ``cls`` part of ``config`` (one of its bases), validated by ``cls`` itself."""
    return cls(**{f.name: getattr(config, f.name) for f in fields(cls)})


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
    keepalives: int = 0  # neutral-throttle CMDs sent while waiting for a frame, to hold the MCU watchdog
    acks: int = 0
    lost_acks: int = 0
    resets: dict[str, int] = field(default_factory=dict)
    run_path: str | None = None
    estop_state: str = ""
    calibration: str = ""  # the MCU's calibration the pulses were converted with (Calibration.describe)
    cpus: list[int] = field(default_factory=list)  # the CPUs the drive was pinned to (empty: any)
    realtime: bool = False  # the drive ran SCHED_FIFO
    sim: dict | None = None  # camera=sim: how well the car drove (SimDriving)
    timings: dict[str, StageStats] = field(default_factory=dict)

    @property
    def rate_hz(self) -> float:
        return self.ticks / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["rate_hz"] = self.rate_hz
        return d

