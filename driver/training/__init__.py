"""Training: typed config, epoch plans (TBPTT lanes), the loop, checkpoints, metrics, DDP.

Names are imported on first use, so ``driver.training.config`` (what the CLI needs to build its flags) does
not pull in torch and the trainer.
"""

import importlib

_LAZY = {"CheckpointError": "checkpoint", "load_checkpoint": "checkpoint", "model_from_checkpoint": "checkpoint",
         "TrainConfig": "config", "resolve_config": "config", "RunResult": "trainer", "TrainingError": "trainer",
         "train": "trainer"}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
