# Copyright (c) monai-mtlmad contributors
# Licensed under the Apache License, Version 2.0
"""Training and evaluation engines."""

from monai_mtlmad.engines.multitask_step import build_task_batch, fit_learner, multitask_train_step

__all__ = ["build_task_batch", "fit_learner", "multitask_train_step"]
