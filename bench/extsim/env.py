"""highway-env's racetrack as the benchmark's external simulator: the environment, the car's state on
its lane, and a camera.

The simulator is highway-env (Farama Foundation, ``pip install highway-env``; a bench-only optional
dependency: ``pip install -e '.[extsim]'``). Its ``racetrack-v1`` is a closed two-lane circuit (5 m lanes,
a 5 m × 2 m car, a kinematic bicycle model, speed limit 10 m/s; ``racetrack-v0`` is the same track, which
highway-env marks out of date). The benchmark configures it for driving from pixels:

- ``ContinuousAction`` with both axes: steering ``[-1, 1]`` → ±45° front-wheel angle (+ = right) and
  acceleration ``[-1, 1]`` → ±5 m/s² (so the car accelerates, coasts at 0 and brakes below 0), speed
  kept in 0..15 m/s (no reversing);
- one simulator step per action at ``fps`` (15 Hz, highway-env's default simulation rate);
- no other vehicles (lane keeping and pace, not traffic);
- the camera: highway-env's own top-down rendering (pygame, offscreen) turned into a car-fixed,
  heading-up view (see :class:`Camera`).

The sim's own notion of success is its reward (``RacetrackEnv._reward``: lane centring, an action
penalty, 0 off the road, in 0..1 per step) and its termination when the car leaves the road.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import cv2
import numpy as np

from driver.errors import DriverError

from .geometry import heading_up_affine, wrap_angle

TRACKS = ("racetrack-v1", "racetrack-v0", "racetrack-large-v1", "racetrack-oval-v1")
ACCEL_LIMIT = 5.0  # m/s² at |action| = 1 (highway-env's ContinuousAction.ACCELERATION_RANGE)
STEER_LIMIT = math.pi / 4  # rad at |action| = 1 (ContinuousAction.STEERING_RANGE)


class ExtSimError(DriverError):
    """The external simulator is missing or was asked for something it cannot do."""


def import_highway_env():
    """Import highway-env for offscreen rendering, or fail with the install command.

    pygame needs a video driver even offscreen; highway-env turns its drawing OFF under
    ``SDL_VIDEODRIVER=dummy`` (``EnvViewer.enabled``), so the benchmark asks SDL for ``offscreen``. SDL's
    own SIGINT/SIGTERM handlers are turned off so that Ctrl-C and ``kill`` stop a recording."""
    if os.environ.get("SDL_VIDEODRIVER", "dummy") == "dummy":
        os.environ["SDL_VIDEODRIVER"] = "offscreen"
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    os.environ.setdefault("SDL_NO_SIGNAL_HANDLERS", "1")  # else SDL swallows SIGINT/SIGTERM: Ctrl-C must stop us
    try:
        import gymnasium
        import highway_env
    except ImportError as e:
        raise ExtSimError(f"the external-simulator benchmark needs highway-env ({e}); install the bench-only "
                          "extra: pip install -e '.[extsim]'") from e
    return gymnasium, highway_env


def sim_version() -> str:
    """The installed highway-env version (recorded in every run and in the benchmark's results)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("highway-env")
    except PackageNotFoundError:
        return "not installed"


@dataclass(frozen=True)
class SimConfig:
    """The simulator and camera settings shared by recording and closed-loop driving."""

    track: str = "racetrack-v1"
    fps: float = 15.0  # simulator steps (= actions = frames) per second
    height: int = 96  # camera image, pixels
    width: int = 96
    view_m: float = 28.0  # width of ground the camera sees, metres
    car_row: float = 0.75  # the car's position in the image, fraction of the height from the top
    max_speed: float = 15.0  # m/s; the car cannot reverse

    def __post_init__(self):
        if self.track not in TRACKS:
            raise ValueError(f"track={self.track!r} must be one of {', '.join(TRACKS)}")
        if not 10.0 < self.fps <= 60.0:
            raise ValueError(f"fps={self.fps} must be in (10, 60]: frames more than 0.1 s apart are invalid "
                             "for driver ingest")
        if not (16 <= self.height <= 512 and 16 <= self.width <= 512):
            raise ValueError(f"height={self.height}, width={self.width} must each be in 16..512 pixels")
        if not 5.0 <= self.view_m <= 200.0:
            raise ValueError(f"view_m={self.view_m} must be in 5..200 m")
        if not 0.1 <= self.car_row <= 0.95:
            raise ValueError(f"car_row={self.car_row} must be in 0.1..0.95")
        if not 1.0 <= self.max_speed <= 40.0:
            raise ValueError(f"max_speed={self.max_speed} must be in 1..40 m/s")

    @property
    def out_px_per_m(self) -> float:
        return self.width / self.view_m

    @property
    def view_radius_m(self) -> float:
        """Distance from the car to the farthest corner of the camera view."""
        view_h = self.view_m * self.height / self.width
        return math.hypot(self.view_m / 2, max(self.car_row, 1 - self.car_row) * view_h)


SUPERSAMPLE = 2  # the sim draws at twice the camera's resolution; the camera area-averages it down


def env_config(config: SimConfig) -> dict:
    """highway-env configuration for ``config`` (see the module docstring)."""
    src_ppm = SUPERSAMPLE * config.out_px_per_m
    screen = int(math.ceil(2 * config.view_radius_m * src_ppm)) + 4
    return {
        "observation": {"type": "AttributesObservation", "attributes": ["time"]},  # cheap: frames come from render
        "action": {"type": "ContinuousAction", "longitudinal": True, "lateral": True,
                   "speed_range": [0.0, config.max_speed]},
        "simulation_frequency": config.fps, "policy_frequency": config.fps,
        "other_vehicles": 0, "duration": 1e9,  # episodes are timed by the caller
        "screen_width": screen, "screen_height": screen, "scaling": src_ppm, "centering_position": [0.5, 0.5],
        "show_trajectories": False,
    }


@dataclass(frozen=True)
class LaneState:
    """Where the car is relative to its (closest) lane: ``lateral`` + right of the centre line (m),
    ``heading_error`` + pointing right of the lane direction (rad), ``s`` metres along the lane."""

    lane_index: tuple
    s: float
    lateral: float
    heading_error: float
    lane_heading: float


class Camera:
    """A car-fixed, heading-up camera on highway-env's own top-down rendering.

    The sim draws the road around the car (north-up, ``SUPERSAMPLE``× the camera's resolution); the view
    is rotated so that the car points up with its right side to the right, the car sits at ``car_row`` of
    the image height, and it is area-averaged down to ``height × width`` RGB."""

    def __init__(self, config: SimConfig):
        self.config = config
        w, h = config.width, config.height
        self.big = (SUPERSAMPLE * w, SUPERSAMPLE * h)
        self.car_at = (SUPERSAMPLE * w / 2, SUPERSAMPLE * config.car_row * h)

    def capture(self, env) -> np.ndarray:
        img = env.render()
        surface = env.viewer.sim_surface
        v = env.vehicle
        car_px = ((v.position[0] - surface.origin[0]) * surface.scaling,
                  (v.position[1] - surface.origin[1]) * surface.scaling)
        m = heading_up_affine(car_px, float(v.heading), surface.scaling, self.big,
                              SUPERSAMPLE * self.config.out_px_per_m, self.car_at)
        big = cv2.warpAffine(img, m, self.big, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                             borderValue=(100, 100, 100))
        return cv2.resize(big, (self.config.width, self.config.height), interpolation=cv2.INTER_AREA)


class RacetrackSim:
    """One highway-env racetrack with the benchmark's settings; the car is placed by the caller."""

    def __init__(self, config: SimConfig):
        gym, _ = import_highway_env()
        self.config = config
        self.env = gym.make(config.track, render_mode="rgb_array", config=env_config(config)).unwrapped
        self.env.reset(seed=0)
        self.camera = Camera(config)

    @property
    def vehicle(self):
        return self.env.vehicle

    @property
    def network(self):
        return self.env.road.network

    def lane_indices(self) -> list[tuple]:
        return [(a, b, i) for a, tos in self.network.graph.items() for b, lanes in tos.items()
                for i in range(len(lanes))]

    def place(self, lane_index: tuple, s: float, lateral: float = 0.0, heading_offset: float = 0.0,
              speed: float = 0.0) -> None:
        """Put the car ``s`` m along ``lane_index``, ``lateral`` m right of its centre, at ``speed``."""
        lane = self.network.get_lane(lane_index)
        v = self.vehicle
        v.position = np.asarray(lane.position(s, lateral), dtype=np.float64)
        v.heading = float(lane.heading_at(s) + heading_offset)
        v.speed = float(speed)
        v.crashed = False
        v.action = {"steering": 0.0, "acceleration": 0.0}
        v.lane_index = self.network.get_closest_lane_index(v.position, v.heading)
        v.lane = self.network.get_lane(v.lane_index)

    def place_random(self, rng: np.random.Generator, speed: tuple[float, float] = (2.0, 9.0)) -> None:
        """A random lane, place along it, small offset and heading error, and speed (for run starts)."""
        lanes = self.lane_indices()
        idx = lanes[int(rng.integers(len(lanes)))]
        lane = self.network.get_lane(idx)
        self.place(idx, float(rng.uniform(0, lane.length)), float(rng.uniform(-0.8, 0.8)),
                   float(rng.uniform(-0.1, 0.1)), float(rng.uniform(*speed)))

    def recover(self, ahead_m: float = 3.0) -> None:
        """An intervention: back onto the centre of the closest lane, ``ahead_m`` further on, aligned,
        at no more than 5 m/s."""
        st = self.lane_state()
        lane = self.network.get_lane(st.lane_index)
        idx, s = st.lane_index, st.s + ahead_m
        if s > lane.length:
            s -= lane.length
            idx = self.network.next_lane(idx, position=lane.position(lane.length, 0.0))
        self.place(idx, max(0.0, s), 0.0, 0.0, min(self.vehicle.speed, 5.0))

    def lane_state(self) -> LaneState:
        v = self.vehicle
        idx = self.network.get_closest_lane_index(v.position, v.heading)
        lane = self.network.get_lane(idx)
        s, lat = lane.local_coordinates(v.position)
        heading = float(lane.heading_at(s))
        # highway-env's lateral coordinate is + to the lane's right on its y-down screen (local_coordinates)
        return LaneState(idx, float(s), float(lat), float(wrap_angle(v.heading - heading)), heading)

    def frame(self) -> np.ndarray:
        return self.camera.capture(self.env)

    def step(self, steer: float, accel: float) -> tuple[float, bool]:
        """Apply normalised (steer, accel) in [-1, 1] for one step; returns (the sim's reward, terminated)."""
        _, reward, terminated, _, _ = self.env.step(np.array([accel, steer], dtype=np.float32))
        return float(reward), bool(terminated)

    def close(self) -> None:
        self.env.close()


__all__ = ["ACCEL_LIMIT", "STEER_LIMIT", "TRACKS", "Camera", "ExtSimError", "LaneState", "RacetrackSim",
           "SimConfig", "env_config", "import_highway_env", "sim_version"]
