"""The TBPTT trainer: compiled multi-step loops, carried state, clipping, checkpoints, summaries.

  from trainer import Trainer
  from trainer.distribute import make_strategy
"""

from trainer.trainer import Trainer

__all__ = ["Trainer"]
