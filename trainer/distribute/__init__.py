"""Distribution: the strategy factory, the cluster's identities, per-replica plumbing.

  from tbptt.trainer.distribute import make_strategy
"""

from tbptt.trainer.distribute.cluster import (describe_lost_worker, is_chief, is_multi_worker,
                                              lost_worker_message, lost_workers_as_training_errors,
                                              task_name)
from tbptt.trainer.distribute.replicas import (distribute_rows, first_replica, gather_rows,
                                               local_values, rows_per_replica, sum_over_replicas)
from tbptt.trainer.distribute.strategy import STRATEGIES, make_strategy

__all__ = ["STRATEGIES", "describe_lost_worker", "distribute_rows", "first_replica", "gather_rows",
           "is_chief", "is_multi_worker", "local_values", "lost_worker_message",
           "lost_workers_as_training_errors", "make_strategy", "rows_per_replica",
           "sum_over_replicas", "task_name"]
