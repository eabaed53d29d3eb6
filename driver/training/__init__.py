"""Training: typed config, epoch plans (TBPTT lanes), the loop, checkpoints, metrics, DDP."""

from .checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from .config import TrainConfig, resolve_config
from .trainer import RunResult, TrainingError, train

__all__ = ["CheckpointError", "RunResult", "TrainConfig", "TrainingError", "load_checkpoint",
           "model_from_checkpoint", "resolve_config", "train"]
