# Copyright (c) monai-mtlmad contributors
# Licensed under the Apache License, Version 2.0
"""Jigsaw: tell where each shuffled tile came from; anomalous tissue makes tiles harder to place."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F

from monai_mtlmad.tasks.base import ProxyTask, TaskViews, register_task
from monai_mtlmad.transforms.array import RandJigsaw

__all__ = ["JigsawTask"]


@register_task("jigsaw")
class JigsawTask(ProxyTask):
    """Dense self-supervised task: shuffled tiles -> each pixel's original tile position (``n_tiles`` classes).

    Error: per-pixel cross-entropy of the first ``inference_permutations`` fixed permutations (the identity
    first), each map un-shuffled back to the image frame, averaged. With ``shifted_grids`` view ``i`` cuts the
    image on a grid shifted by ``i / inference_permutations`` of a tile along every dimension (and training rolls
    each image by a random offset below one tile): tile boundaries fall everywhere equally often, so the map shows
    no tile grid.

    Args:
        grid: tiles per dimension; default 3 (2D, 9 tiles) or 2 (3D, 8 tiles).
        num_permutations: size of the fixed, maximally different permutation set.
        inference_permutations: how many of them score an image.
        permutation_seed: seed of the permutation set.
        shifted_grids: score over shifted grids and train on randomly shifted ones (see above).
    """

    kind = "dense"

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        grid: int | Sequence[int] | None = None,
        num_permutations: int = 24,
        inference_permutations: int = 8,
        permutation_seed: int = 0,
        shifted_grids: bool = True,
    ) -> None:
        super().__init__(spatial_dims, in_channels)
        grid = grid or (3 if spatial_dims == 2 else 2)
        self.transform = RandJigsaw(grid, num_permutations, permutation_seed, ignore_index=-1, random_shift=shifted_grids)
        self.shifted_grids = shifted_grids
        self.inference_permutations = min(inference_permutations, num_permutations)

    @property
    def out_channels(self) -> int:
        return self.transform.num_tiles(self.spatial_dims)

    def training_views(self, images, generator=None, batch=None) -> TaskViews:
        views, target, ids = self.transform.batched(images, generator)
        return TaskViews(views, target[:, 0], {"perm": ids})

    def loss(self, output: torch.Tensor, views: TaskViews) -> torch.Tensor:
        return F.cross_entropy(output, views.target, ignore_index=-1)

    def inference_views(self, images: torch.Tensor, batch: Mapping | None = None) -> Iterator[TaskViews]:
        b, n = images.shape[0], self.inference_permutations
        tile = torch.tensor(self.transform.tile_shape(images.shape[2:]), device=images.device)
        for i in range(n):
            ids = torch.full((b,), i, dtype=torch.long, device=images.device)
            shifts = (tile * i // n).expand(b, -1) if self.shifted_grids else None
            views, target = self.transform.views_for(images, ids, shifts)
            yield TaskViews(views, target[:, 0], {"perm": ids, "shifts": shifts})

    def error(self, output: torch.Tensor, views: TaskViews) -> tuple[torch.Tensor, torch.Tensor]:
        ce = F.cross_entropy(output, views.target, ignore_index=-1, reduction="none").unsqueeze(1)
        emap = self.transform.unshuffle(ce, views.info["perm"], views.info.get("shifts")) / self.inference_permutations
        return emap.flatten(1).mean(1), emap
