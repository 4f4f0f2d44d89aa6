# Copyright (c) monai-mtlmad contributors
# Licensed under the Apache License, Version 2.0
"""Orientation: recognise the pose of an image; anatomy has a canonical one."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch
import torch.nn.functional as F

from monai_mtlmad.tasks.base import ProxyTask, TaskViews, register_task
from monai_mtlmad.transforms.array import RandOrientation
from monai_mtlmad.transforms.functional import tilt_batch

__all__ = ["OrientationTask"]


@register_task("orientation")
class OrientationTask(ProxyTask):
    """Global self-supervised task: the image in one of a fixed set of poses -> which pose.

    Error: cross-entropy averaged over all poses. No map.

    With ``tilt`` > 0 the poses are finer: each view is also rotated by a small angle drawn from ``[-tilt, tilt]``
    degrees in the plane of the last two spatial axes (:func:`~monai_mtlmad.transforms.functional.tilt_batch`,
    which keeps the inscribed disc of every view so its corners do not tell the angle), and the network regresses
    that angle (one more output channel, in units of ``tilt``) besides classifying the pose. Right-angle poses are
    learnt within a few hundred steps and then say little; the tilt of an anatomy is never read exactly, and how far
    off the reading is depends on how normal the anatomy looks. Scoring views: every pose once, pose ``k`` tilted by
    ``+-tilt / 2`` (alternating), so the number of views is unchanged. Error: the cross-entropy plus the squared
    angle error, both averaged over the views.

    Args:
        num_poses: 4 or 8 in 2D, 24 or 4 in 3D (see :class:`~monai_mtlmad.transforms.RandOrientation`).
        tilt: largest tilt in degrees (0: right-angle poses only, the original task).
        tilt_weight: weight of the angle regression in the loss.
    """

    kind = "global"

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        num_poses: int | None = None,
        tilt: float = 0.0,
        tilt_weight: float = 1.0,
    ) -> None:
        super().__init__(spatial_dims, in_channels)
        if not 0 <= tilt < 45:
            raise ValueError(f"tilt must be in [0, 45) degrees (larger tilts overlap the right-angle poses), got {tilt}.")
        self.transform = RandOrientation(num_poses)
        self.tilt = float(tilt)
        self.tilt_weight = float(tilt_weight)

    @property
    def num_poses(self) -> int:
        return self.transform.count(self.spatial_dims)

    @property
    def out_channels(self) -> int:
        return self.num_poses + (1 if self.tilt else 0)

    def _tilted(self, views: torch.Tensor, ids: torch.Tensor, angles: torch.Tensor | None) -> TaskViews:
        if not self.tilt:
            return TaskViews(views, ids)
        return TaskViews(tilt_batch(views, angles * self.tilt), ids, {"tilt": angles})

    def training_views(self, images, generator=None, batch=None) -> TaskViews:
        views, ids = self.transform.batched(images, generator)
        angles = None
        if self.tilt:
            angles = torch.rand(images.shape[0], generator=generator, device=images.device) * 2 - 1
        return self._tilted(views, ids, angles)

    def _terms(self, output: torch.Tensor, views: TaskViews) -> torch.Tensor:
        """Per-sample loss terms ``(B,)``: cross-entropy of the pose, plus the weighted squared angle error."""
        ce = F.cross_entropy(output[:, : self.num_poses], views.target, reduction="none")
        if not self.tilt:
            return ce
        return ce + self.tilt_weight * (output[:, self.num_poses] - views.info["tilt"]) ** 2

    def loss(self, output: torch.Tensor, views: TaskViews) -> torch.Tensor:
        return self._terms(output, views).mean()

    def inference_views(self, images: torch.Tensor, batch: Mapping | None = None) -> Iterator[TaskViews]:
        for pose in range(self.num_poses):
            ids = torch.full((images.shape[0],), pose, dtype=torch.long, device=images.device)
            angles = torch.full((images.shape[0],), 0.5 if pose % 2 == 0 else -0.5, device=images.device)
            yield self._tilted(self.transform.views_for(images, ids), ids, angles)

    def error(self, output: torch.Tensor, views: TaskViews) -> tuple[torch.Tensor, None]:
        return self._terms(output, views) / self.num_poses, None
