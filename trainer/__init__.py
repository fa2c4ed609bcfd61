"""The TBPTT trainer: compiled multi-step loops, carried state, clipping, checkpoints, summaries.

  from tbptt.trainer import Trainer
  from tbptt.trainer.distribute import make_strategy
"""

from tbptt.trainer.trainer import Trainer

__all__ = ["Trainer"]
