# Copyright (c) monai-mtlmad contributors
# Licensed under the Apache License, Version 2.0
"""Coarse-noise denoising: restore images from low-frequency noise; what the learner removes from an unmodified
image is what it does not take for normal anatomy (Kascenas et al., MIDL 2022, as one task of the learner)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import torch

from monai_mtlmad.tasks.base import ProxyTask, TaskViews, register_task
from monai_mtlmad.transforms.array import RandCoarseNoise

__all__ = ["DenoisingTask"]


@register_task("denoising")
class DenoisingTask(ProxyTask):
    """Dense self-supervised task: image with coarse Gaussian noise on the foreground -> the clean image.

    Loss: L1 between the restoration and the clean image (all pixels). Error: on the unmodified image (one view),
    the absolute residual ``|restoration - image|`` (channel mean) as the map, its mean as the image error.

    Args:
        prob, cell, std_range, foreground_threshold: see :class:`~monai_mtlmad.transforms.RandCoarseNoise`.
    """

    kind = "dense"

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        prob: float = 0.9,
        cell: int | Sequence[int] | None = None,
        std_range: tuple[float, float] = (0.1, 0.3),
        foreground_threshold: float = 0.1,
    ) -> None:
        super().__init__(spatial_dims, in_channels)
        self.transform = RandCoarseNoise(prob, cell, std_range, foreground_threshold)

    @property
    def out_channels(self) -> int:
        return self.in_channels

    def training_views(self, images, generator=None, batch=None) -> TaskViews:
        views, _ = self.transform.batched(images, generator)
        return TaskViews(views, images)

    def loss(self, output: torch.Tensor, views: TaskViews) -> torch.Tensor:
        return (output - views.target).abs().mean()

    def inference_views(self, images: torch.Tensor, batch: Mapping | None = None) -> Iterator[TaskViews]:
        yield TaskViews(images, images)

    def error(self, output: torch.Tensor, views: TaskViews) -> tuple[torch.Tensor, torch.Tensor]:
        emap = (output - views.target).abs().mean(1, keepdim=True)
        return emap.flatten(1).mean(1), emap
