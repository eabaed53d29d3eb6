"""driver: behavioral cloning for small autonomous cars.

The public Python API (imported lazily so `import driver` stays light):

- ``driver.ingest(driver.IngestConfig(sources, out))``: HDF5 runs into a store.
- ``driver.open_store(path)``: an ingested store's runs, frames, labels and series, and its clip Dataset.
- ``driver.train(config) -> RunResult``: train a controller (``driver.TrainConfig``).
- ``driver.load_policy(checkpoint) -> Policy``: ``policy.reset()``, ``policy.act(frame, right, mode)``.

See docs/python-api.md.
"""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "ingest": ("driver.datasets.ingest", "ingest"),
    "IngestConfig": ("driver.datasets.ingest", "IngestConfig"),
    "ClipConfig": ("driver.datasets.clips", "ClipConfig"),
    "load_policy": ("driver.policy", "load_policy"),
    "Policy": ("driver.policy", "Policy"),
    "Action": ("driver.policy", "Action"),
    "train": ("driver.training", "train"),
    "TrainConfig": ("driver.training", "TrainConfig"),
    "RunResult": ("driver.training", "RunResult"),
    "open_store": ("driver.datasets.store", "Store"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'driver' has no attribute {name!r}")
