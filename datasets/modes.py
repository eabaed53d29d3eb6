"""The behavioural-mode input, defined once: which labels are on, as a 0/1 vector over a model's modes.

Training (every clip of a run), replay, the simulator and the car all build the model's mode input with
:func:`mode_vector`, so a run labelled ``direct`` and ``racing`` conditions the model on both everywhere::

    mode_vector({"direct": 1, "racing": 1, "sim": 1}, MODES)  # a run's labels   -> [1, 0, 0, 0, 1, 0]
    mode_vector({"direct", "racing"}, MODES)                  # a set of labels  -> the same
    mode_vector("direct", MODES)                              # one label        -> [1, 0, 0, 0, 0, 0]
    mode_vector(None, MODES)                                  # no mode          -> all zeros

Labels that are not among ``modes`` (``sim``, ``reject_run``, ...) are ignored, as in training.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

# The lab's six conditioning planes: five behavioural modes and "caffe" (a network was driving).
MODES: tuple[str, ...] = ("direct", "follow", "furtive", "play", "racing", "caffe")

Labels = Mapping[str, int] | Iterable[str] | str | None


def active_labels(labels: Labels) -> frozenset[str]:
    """The labels that are on: from a run's ``{label: 0|1}`` dict, a set or list of names, one name, or None."""
    if labels is None:
        return frozenset()
    if isinstance(labels, str):
        return frozenset((labels,))
    if isinstance(labels, Mapping):
        return frozenset(k for k, v in labels.items() if int(v))
    return frozenset(labels)


def mode_vector(labels: Labels, modes: tuple[str, ...] = MODES) -> np.ndarray:
    """float32 ``(len(modes),)``: 1 where the mode's label is on, else 0."""
    on = active_labels(labels)
    return np.array([float(m in on) for m in modes], dtype=np.float32)
