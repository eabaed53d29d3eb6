"""See runs, replays, sim drives and the live car in Rerun (optional extra: ``pip install 'driver[view]'``).

- :mod:`.sink`: where a view goes: a ``.rrd`` file, a spawned viewer, Rerun's web viewer served on a
  port, or a viewer on another machine (``rerun+http://HOST:PORT/proxy``).
- :mod:`.store_view`: ``driver view STORE``: both cameras, commands, state, validity, segments, labels.
- :mod:`.replay_view`: ``driver replay --view``: model against human with the per-frame error.
- :mod:`.sim_view`: ``driver sim drive --view``: top-down path, interventions and the camera.
- :mod:`.live`: ``driver drive --view``: the car, streamed from a background thread.

Entity paths and timelines are listed in docs/view.md.
"""

from __future__ import annotations

from driver.errors import DriverError

INSTALL_HINT = "pip install 'driver[view]' (or pip install rerun-sdk)"


def require_rerun():
    """The ``rerun`` module, or a one-line error saying how to install it."""
    try:
        import rerun as rr
    except ImportError:
        raise DriverError(f"this view needs Rerun, which is not installed: {INSTALL_HINT}") from None
    return rr
