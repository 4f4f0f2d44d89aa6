# Copyright (c) monai-mtlmad contributors
# Licensed under the Apache License, Version 2.0
"""Pseudo-labels: predict network-free tissue labels of the clean image from a degraded view."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from monai.networks.layers import GaussianFilter

from monai_mtlmad.tasks.base import ProxyTask, TaskViews, register_task
from monai_mtlmad.transforms.array import PseudoLabel, RandInpaintMask

__all__ = ["PseudoLabelTask"]


@register_task("pseudo_label")
class PseudoLabelTask(ProxyTask):
    """Dense pseudo-labeling task: blurred image with hidden patches -> labels of the clean image.

    Labels come from :class:`~monai_mtlmad.transforms.PseudoLabel` (multi-Otsu tissue classes by default). Put
    :class:`~monai_mtlmad.transforms.PseudoLabeld` in the data pipeline so they are cached per image and arrive as
    ``batch[label_key]``; without it they are computed here, image by image on the CPU (slower).
    Error: per-pixel cross-entropy on hidden pixels of the complementary lattice views (each pixel once).

    Args:
        method, classes: see :class:`~monai_mtlmad.transforms.PseudoLabel`.
        blur_sigma: Gaussian blur of the view, in pixels/voxels.
        patch_size: hidden patch side; default 16 (2D) or 8 (3D).
        ratio_range, stride: see :class:`~monai_mtlmad.transforms.RandInpaintMask`.
        label_key: batch key of precomputed labels ``(B, 1, *spatial)``.
    """

    kind = "dense"

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        method: str = "multiotsu",
        classes: int = 3,
        blur_sigma: float = 1.5,
        patch_size: int | Sequence[int] | None = None,
        ratio_range: tuple[float, float] = (0.1, 0.3),
        stride: int = 2,
        label_key: str = "image_pseudo_label",
    ) -> None:
        super().__init__(spatial_dims, in_channels)
        self.labeller = PseudoLabel(method, classes)
        self.mask = RandInpaintMask(patch_size or (16 if spatial_dims == 2 else 8), ratio_range, 0.5, stride)
        self.blur = GaussianFilter(spatial_dims, blur_sigma)
        self.label_key = label_key

    @property
    def out_channels(self) -> int:
        return self.labeller.num_classes

    def labels(self, images: torch.Tensor, batch: Mapping | None = None) -> torch.Tensor:
        """``(B, *spatial)`` long labels: from ``batch[label_key]`` if present, else computed per image."""
        if batch is not None and self.label_key in batch:
            labels = torch.as_tensor(batch[self.label_key]).to(images.device)
            if labels.shape[0] != images.shape[0] or labels.shape[-self.spatial_dims :] != images.shape[2:]:
                raise ValueError(
                    f"batch[{self.label_key!r}] has shape {tuple(labels.shape)}, images {tuple(images.shape)}: "
                    "apply the same spatial transforms to both keys."
                )
            return labels.reshape(images.shape[0], *images.shape[2:]).long()
        return torch.stack([self.labeller(img) for img in images.detach()])[:, 0].long().to(images.device)

    def training_views(self, images, generator=None, batch=None) -> TaskViews:
        blurred = self.blur.to(images.device)(images)
        views, masks = self.mask.batched(blurred, generator)
        return TaskViews(views, self.labels(images, batch), {"mask": masks})

    def loss(self, output: torch.Tensor, views: TaskViews) -> torch.Tensor:
        return F.cross_entropy(output, views.target)

    def inference_views(self, images: torch.Tensor, batch: Mapping | None = None) -> Iterator[TaskViews]:
        blurred = self.blur.to(images.device)(images)
        labels = self.labels(images, batch)
        for views, mask in self.mask.inference_views(blurred):
            yield TaskViews(views, labels, {"mask": mask})

    def error(self, output: torch.Tensor, views: TaskViews) -> tuple[torch.Tensor, torch.Tensor]:
        ce = F.cross_entropy(output, views.target, reduction="none").unsqueeze(1)
        emap = ce * views.info["mask"]
        return emap.flatten(1).mean(1), emap
