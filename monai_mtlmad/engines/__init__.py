# Copyright (c) monai-mtlmad contributors
# Licensed under the Apache License, Version 2.0
"""Training and evaluation: the plain joint step, and the Ignite trainer/evaluator built on it."""

from monai_mtlmad.engines.multitask_step import (
    build_task_batch,
    clip_and_step,
    fit_learner,
    multitask_loss,
    multitask_train_step,
)
from monai_mtlmad.engines.random_states import RandomStates
from monai_mtlmad.engines.workflows import AnomalyEvaluator, MultiTaskTrainer, batch_images

__all__ = [
    "AnomalyEvaluator",
    "MultiTaskTrainer",
    "RandomStates",
    "batch_images",
    "build_task_batch",
    "clip_and_step",
    "fit_learner",
    "multitask_loss",
    "multitask_train_step",
]
