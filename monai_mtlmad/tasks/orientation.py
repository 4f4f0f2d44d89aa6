# Copyright (c) monai-mtlmad contributors
# Licensed under the Apache License, Version 2.0
"""Orientation: recognise the pose of an image; anatomy has a canonical one."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch
import torch.nn.functional as F

from monai_mtlmad.tasks.base import ProxyTask, TaskViews, register_task
from monai_mtlmad.transforms.array import RandOrientation

__all__ = ["OrientationTask"]


@register_task("orientation")
class OrientationTask(ProxyTask):
    """Global self-supervised task: the image in one of a fixed set of poses -> which pose.

    Error: cross-entropy averaged over all poses. No map.

    Args:
        num_poses: 4 or 8 in 2D, 24 or 4 in 3D (see :class:`~monai_mtlmad.transforms.RandOrientation`).
    """

    kind = "global"

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, num_poses: int | None = None) -> None:
        super().__init__(spatial_dims, in_channels)
        self.transform = RandOrientation(num_poses)

    @property
    def out_channels(self) -> int:
        return self.transform.count(self.spatial_dims)

    def training_views(self, images, generator=None, batch=None) -> TaskViews:
        views, ids = self.transform.batched(images, generator)
        return TaskViews(views, ids)

    def loss(self, output: torch.Tensor, views: TaskViews) -> torch.Tensor:
        return F.cross_entropy(output, views.target)

    def inference_views(self, images: torch.Tensor, batch: Mapping | None = None) -> Iterator[TaskViews]:
        for pose in range(self.out_channels):
            ids = torch.full((images.shape[0],), pose, dtype=torch.long, device=images.device)
            yield TaskViews(self.transform.views_for(images, ids), ids)

    def error(self, output: torch.Tensor, views: TaskViews) -> tuple[torch.Tensor, None]:
        return F.cross_entropy(output, views.target, reduction="none") / self.out_channels, None
