"""World variants: everything about a world except the track's centreline. A variant draws the road width,
the look (textures, lighting, shadows, road stains and seams, distractors; :class:`.scenery.Style`) and
the camera mount (height and pitch jitter) from its own ``(seed, split)``.

Variants are split like tracks: ``split="train"`` and ``split="eval"`` use disjoint random streams, so a
model evaluated on eval variants has never seen their looks, road widths or camera mounts. By default a
track is driven in its own variant (same seed and split); any track can be combined with any variant::

    world = make_world(3, "eval", variant=7, variant_split="eval")   # eval track 3 in eval variant 7
    renderer = world.renderer(height=94, width=168)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property

from .camera import CameraSpec, Renderer
from .scenery import Scenery, Style, make_scenery, make_style
from .track import Track, draw_lane_width, make_track, split_rng

CAMERA_STREAM = 5  # random stream of a variant's camera mount
CAMERA_HEIGHT_M = (0.18, 0.22)  # mount height range
CAMERA_PITCH_DEG = (17.0, 23.0)  # mount pitch range


@dataclass(frozen=True)
class Variant:
    """One world variant (see module docstring)."""

    seed: int
    split: str
    lane_width: float  # metres
    style: Style
    camera: CameraSpec


def make_variant(seed: int, split: str = "train") -> Variant:
    """Variant ``seed`` of ``split`` (deterministic)."""
    rng = split_rng(seed, split, CAMERA_STREAM)
    camera = CameraSpec(height_m=float(rng.uniform(*CAMERA_HEIGHT_M)), pitch_deg=float(rng.uniform(*CAMERA_PITCH_DEG)))
    return Variant(int(seed), split, draw_lane_width(seed, split), make_style(seed, split), camera)


@dataclass
class World:
    """A track driven in a variant: the track carries the variant's road width."""

    track: Track
    variant: Variant

    @property
    def name(self) -> str:
        """``<split>/<track seed>`` plus ``@<split>/<variant seed>`` when the variant is not the track's own."""
        t, v = self.track, self.variant
        own = (v.seed, v.split) == (t.seed, t.split)
        return f"{t.split}/{t.seed}" + ("" if own else f"@{v.split}/{v.seed}")

    @cached_property
    def scenery(self) -> Scenery:
        return make_scenery(self.track, self.variant.style)

    def renderer(self, height: int = 94, width: int = 168, stereo: bool = False, seed: int = 0,
                 noise: bool = True) -> Renderer:
        """A camera renderer of this world (the variant's camera mount and look)."""
        return Renderer(self.track, height, width, stereo, seed=seed, spec=self.variant.camera,
                        scenery=self.scenery, noise=noise)


def make_world(track: int | Track, split: str = "eval", variant: int | None = None,
               variant_split: str | None = None) -> World:
    """Track ``track`` of ``split`` in variant ``variant`` of ``variant_split`` (defaults: the track's own
    seed and split). ``track`` may be a built :class:`Track` (its geometry is reused)."""
    built = track if isinstance(track, Track) else make_track(int(track), split)
    v = make_variant(built.seed if variant is None else int(variant), variant_split or built.split)
    if v.lane_width != built.lane_width:
        built = replace(built, lane_width=v.lane_width)
    return World(built, v)
