"""The one description of a model's input and output shape, shared by data, training and car code."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from driver.datasets.modes import MODES as LAB_MODES  # noqa: F401 - the lab modes, re-exported

_MAX_SIDE = 4096
_MAX_CAMERAS = 8
_MAX_STACK = 64
_MAX_MODES = 256
_MAX_HORIZON = 1024


@dataclass(frozen=True)
class InputSpec:
    """Shape of one model input frame and of the prediction.

    A frame is ``(C, H, W)`` with ``C = 3 * cameras * stack`` channels ordered time-major, as in the lab's
    PyTorch code: ``[cam0 t-1, cam1 t-1, cam0 t, cam1 t]``, each RGB, normalised as ``x / 255 - 0.5``.
    ``n_modes`` is the length of the behavioural-mode vector (0 = no conditioning) and ``horizon`` the
    number of future (steer, motor) pairs predicted per frame.
    """

    height: int = 94  # frame height in pixels
    width: int = 168  # frame width in pixels
    cameras: int = 2  # cameras per frame
    stack: int = 2  # frames stacked per step
    n_modes: int = 6  # behavioral-mode planes
    horizon: int = 10  # future steps predicted

    def __post_init__(self) -> None:
        ranges = {
            "height": (1, _MAX_SIDE),
            "width": (1, _MAX_SIDE),
            "cameras": (1, _MAX_CAMERAS),
            "stack": (1, _MAX_STACK),
            "n_modes": (0, _MAX_MODES),
            "horizon": (1, _MAX_HORIZON),
        }
        for name, (low, high) in ranges.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"InputSpec.{name} must be an int in [{low}, {high}], got {value!r}")
            if not low <= value <= high:
                raise ValueError(f"InputSpec.{name}={value} is out of range; valid range is [{low}, {high}]")

    @property
    def channels(self) -> int:
        """Input channels per frame: 3 (RGB) x cameras x stacked frames."""
        return 3 * self.cameras * self.stack

    @property
    def outputs(self) -> int:
        """Scalar outputs per frame: ``horizon`` steps of (steer, motor)."""
        return 2 * self.horizon

    def to_dict(self) -> dict[str, int]:
        """JSON-serialisable form, the inverse of :meth:`from_dict`."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InputSpec:
        """Rebuild from :meth:`to_dict`; unknown keys raise ``ValueError``."""
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown InputSpec fields {unknown}; valid: {sorted(cls.__dataclass_fields__)}")
        return cls(**data)
