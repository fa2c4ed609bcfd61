"""The TBPTT trainer: compiled multi-step loops, carried state, clipping, checkpoints, summaries.

  from tbptt.trainer import Trainer, TrainerConfig
  from tbptt.trainer.distribute import make_strategy
"""

from tbptt.trainer.config import TrainerConfig
from tbptt.trainer.runtime import Runtime
from tbptt.trainer.trainer import Trainer

__all__ = ["Runtime", "Trainer", "TrainerConfig"]
