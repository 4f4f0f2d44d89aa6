# Copyright (c) monai-mtlmad contributors
# Licensed under the Apache License, Version 2.0
"""Pseudo-anomaly segmentation: find synthetic local anomalies; on a real image, the predicted probability."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F

from monai_mtlmad.tasks.base import ProxyTask, TaskViews, register_task
from monai_mtlmad.transforms.array import RandPseudoAnomaly
from monai_mtlmad.transforms.functional import PSEUDO_ANOMALY_KINDS

__all__ = ["PseudoAnomalyTask"]


@register_task("pseudo_anomaly")
class PseudoAnomalyTask(ProxyTask):
    """Dense self-supervised task: image with a blended synthetic anomaly -> its soft mask (one logit channel).

    Foreign patches come from another image of the batch. Loss: binary cross-entropy plus soft Dice over the
    batch (Dice keeps small anomalies from being drowned by the background). A curriculum starts with the most
    visible anomalies and widens to the full contrast ranges over the first ``curriculum`` fraction of training.
    Error: the predicted anomaly probability on the clean image.

    Args:
        prob: fraction of training views that carry an anomaly (the rest teach that clean tissue is normal).
        kinds, radius_range, opacity_range, contrast_range, push_range: see
            :class:`~monai_mtlmad.transforms.RandPseudoAnomaly`.
        curriculum: fraction of training over which the difficulty rises from 0 to 1 (0 disables it).
        dice_weight: weight of the soft Dice term.
    """

    kind = "dense"

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        prob: float = 0.8,
        kinds: Sequence[str] = PSEUDO_ANOMALY_KINDS,
        radius_range: tuple[float, float] = (0.04, 0.2),
        opacity_range: tuple[float, float] = (0.5, 1.0),
        contrast_range: tuple[float, float] = (0.1, 0.5),
        push_range: tuple[float, float] = (0.3, 0.7),
        curriculum: float = 0.3,
        dice_weight: float = 1.0,
    ) -> None:
        super().__init__(spatial_dims, in_channels)
        self.transform = RandPseudoAnomaly(prob, kinds, radius_range, opacity_range, contrast_range, push_range)
        self.curriculum = curriculum
        self.dice_weight = dice_weight
        self.set_progress(0.0)

    @property
    def out_channels(self) -> int:
        return 1

    def set_progress(self, progress: float) -> None:
        super().set_progress(progress)
        self.transform.difficulty = min(1.0, self.progress / self.curriculum) if self.curriculum > 0 else 1.0

    def training_views(self, images, generator=None, batch=None) -> TaskViews:
        views, target = self.transform.batched(images, generator)
        return TaskViews(views, target)

    def loss(self, output: torch.Tensor, views: TaskViews) -> torch.Tensor:
        target = views.target
        bce = F.binary_cross_entropy_with_logits(output, target)
        prob = torch.sigmoid(output)
        dice = 1 - (2 * (prob * target).sum() + 1) / (prob.sum() + target.sum() + 1)
        return bce + self.dice_weight * dice

    def inference_views(self, images: torch.Tensor, batch: Mapping | None = None) -> Iterator[TaskViews]:
        yield TaskViews(images)

    def error(self, output: torch.Tensor, views: TaskViews) -> tuple[torch.Tensor, torch.Tensor]:
        emap = torch.sigmoid(output)
        return emap.flatten(1).mean(1), emap
