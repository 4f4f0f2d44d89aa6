# Copyright (c) monai-mtlmad contributors
# Licensed under the Apache License, Version 2.0
"""Proxy tasks, one module each, and their registry.

A new task is one module with a :class:`ProxyTask` subclass decorated by :func:`register_task`, imported here,
plus one entry in the config's task list.
"""

from monai_mtlmad.tasks.base import TASK_REGISTRY, ProxyTask, TaskViews, create_task, create_tasks, register_task
from monai_mtlmad.tasks.denoising import DenoisingTask
from monai_mtlmad.tasks.inpainting import InpaintingTask
from monai_mtlmad.tasks.jigsaw import JigsawTask
from monai_mtlmad.tasks.orientation import OrientationTask
from monai_mtlmad.tasks.pseudo_anomaly import PseudoAnomalyTask
from monai_mtlmad.tasks.pseudo_label import PseudoLabelTask

DEFAULT_TASKS = ("inpainting", "jigsaw", "orientation", "pseudo_anomaly", "pseudo_label")

__all__ = [
    "TASK_REGISTRY",
    "DEFAULT_TASKS",
    "ProxyTask",
    "TaskViews",
    "create_task",
    "create_tasks",
    "register_task",
    "DenoisingTask",
    "InpaintingTask",
    "JigsawTask",
    "OrientationTask",
    "PseudoAnomalyTask",
    "PseudoLabelTask",
]
