"""Algorithm-independent training machinery: train state, optimizer, checkpoints, metrics, the loop, and the
one scoring module (a model applied to a batch: token and sequence log-probs, pair rewards).

The per-algorithm steps live with their stages (jaxrlhf.stages): they build on `state.make_train_step` or follow
the same `step_fn(state, batch) -> (state, metrics)` contract, and all run through `loop.train`.
"""

from jaxrlhf.train.checkpoint import Checkpointer, last_finite_step
from jaxrlhf.train.loop import LoopConfig, NonFiniteError, train
from jaxrlhf.train.metrics import Avg, MetricsWriter, Sum
from jaxrlhf.train.optim import OptimizerConfig, make_optimizer, make_schedule
from jaxrlhf.train.state import (StateSetup, TrainState, init_train_state, logical_shardings,
                                 make_train_step)

__all__ = [
    "Avg", "Checkpointer", "LoopConfig", "MetricsWriter", "NonFiniteError", "OptimizerConfig", "StateSetup",
    "Sum", "TrainState", "init_train_state", "last_finite_step", "logical_shardings",
    "make_optimizer", "make_schedule", "make_train_step", "train",
]
