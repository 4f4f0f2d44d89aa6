# Copyright (c) monai-mtlmad contributors
# Licensed under the Apache License, Version 2.0
"""Inpainting: reconstruct hidden patches from their context; anomalies are what context does not predict."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import torch

from monai_mtlmad.tasks.base import ProxyTask, TaskViews, register_task
from monai_mtlmad.transforms.array import RandInpaintMask

__all__ = ["InpaintingTask"]


@register_task("inpainting")
class InpaintingTask(ProxyTask):
    """Dense self-supervised task: the image with random patches hidden -> the original intensities.

    Loss: L1 on hidden pixels, plus ``visible_weight`` times L1 on visible ones (keeps the output anchored).
    Error: at inference the ``stride ** spatial_dims`` complementary lattice masks hide every pixel exactly once;
    the map is the absolute reconstruction error (channel mean) of each pixel from the view that hid it.

    Args:
        patch_size: hidden patch side; default 16 (2D) or 8 (3D).
        ratio_range, lattice_prob, stride, fill_value: see :class:`~monai_mtlmad.transforms.RandInpaintMask`.
        visible_weight: loss weight of visible pixels relative to hidden ones.
    """

    kind = "dense"

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        patch_size: int | Sequence[int] | None = None,
        ratio_range: tuple[float, float] = (0.15, 0.5),
        lattice_prob: float = 0.5,
        stride: int = 2,
        fill_value: float = 0.0,
        visible_weight: float = 0.1,
    ) -> None:
        super().__init__(spatial_dims, in_channels)
        patch_size = patch_size or (16 if spatial_dims == 2 else 8)
        self.transform = RandInpaintMask(patch_size, ratio_range, lattice_prob, stride, fill_value)
        self.visible_weight = visible_weight

    @property
    def out_channels(self) -> int:
        return self.in_channels

    def training_views(self, images, generator=None, batch=None) -> TaskViews:
        views, masks = self.transform.batched(images, generator)
        return TaskViews(views, images, {"mask": masks})

    def loss(self, output: torch.Tensor, views: TaskViews) -> torch.Tensor:
        mask = views.info["mask"]
        weight = mask + self.visible_weight * (1 - mask)
        err = (output - views.target).abs().mean(1, keepdim=True)
        return (weight * err).sum() / weight.sum()

    def inference_views(self, images: torch.Tensor, batch: Mapping | None = None) -> Iterator[TaskViews]:
        for views, mask in self.transform.inference_views(images):
            yield TaskViews(views, images, {"mask": mask})

    def error(self, output: torch.Tensor, views: TaskViews) -> tuple[torch.Tensor, torch.Tensor]:
        emap = (output - views.target).abs().mean(1, keepdim=True) * views.info["mask"]
        return emap.flatten(1).mean(1), emap
