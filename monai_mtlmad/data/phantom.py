# Copyright (c) monai-mtlmad contributors
# Licensed under the Apache License, Version 2.0
"""Synthetic head-like phantoms for smoke tests, demos and task checks.

These are **phantoms, not clinical data**: ellipsoidal heads with a skull rim, grey/white-matter-like texture,
ventricles, intensity inhomogeneity and noise, varying from subject to subject. They exist so that every
capability can be exercised on a machine with no data and no download.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from monai_mtlmad.transforms.functional import normalised_grid, smooth_noise

__all__ = ["head_phantoms"]


def head_phantoms(num: int, spatial_shape: Sequence[int], seed: int = 0, noise: float = 0.03) -> np.ndarray:
    """Generate ``num`` head-like phantoms.

    Args:
        num: number of subjects.
        spatial_shape: ``(H, W)`` or ``(H, W, D)``.
        seed: every subject is a deterministic function of ``seed``.
        noise: standard deviation of the additive Gaussian noise.

    Returns:
        float32 array ``(num, 1, *spatial_shape)`` in [0, 1], background 0.
    """
    g = torch.Generator().manual_seed(seed)
    dims = len(spatial_shape)

    def u(lo, hi, *shape):
        return lo + (hi - lo) * torch.rand((num, *shape), generator=g)

    bshape = (num, 1) + (1,) * dims
    grid = normalised_grid(spatial_shape, "cpu").unsqueeze(0)  # (1, D, *sp)
    centre = u(-0.06, 0.06, dims).view(num, dims, *([1] * dims))
    axes = u(0.68, 0.86, dims).view(num, dims, *([1] * dims))
    wobble = 0.04 * smooth_noise(num, spatial_shape, 4, g)
    # egg-shaped (wider towards the end of the first axis) so that the head has one canonical pose
    egg = (1 + 0.12 * (grid[:, :1] - centre[:, :1])).repeat(1, dims, *([1] * dims))
    egg[:, 0] = 1.0  # the width, not the length, grows along the first axis
    r = torch.sqrt((((grid - centre) / (axes * egg)) ** 2).sum(1, keepdim=True)) + wobble  # (N, 1, *sp)
    skull_in = u(0.86, 0.9).view(bshape)
    head = (r < 1.0).float()
    brain = (r < skull_in).float()
    skull = head - brain
    # tissue: two classes (grey/white-like) from a thresholded smooth field, plus fine texture
    field = smooth_noise(num, spatial_shape, 7, g) + 0.6 * smooth_noise(num, spatial_shape, 13, g)
    white = torch.sigmoid((field - 0.1) / 0.08)
    tissue = 0.45 + 0.2 * white + 0.05 * smooth_noise(num, spatial_shape, 29, g)
    # ventricles: two small dark ellipsoids mirrored about the first axis' midline
    vent = torch.zeros_like(r)
    for side in (-1.0, 1.0):
        vc = centre.clone()
        vc[:, 0] -= 0.12  # ventricles sit towards the narrow (frontal) end
        vc[:, -1] += side * u(0.1, 0.16).view(num, *([1] * dims))
        va = torch.cat([u(0.2, 0.3, 1), u(0.06, 0.09, dims - 1)], 1).view(num, dims, *([1] * dims))
        vr = torch.sqrt((((grid - vc) / va) ** 2).sum(1, keepdim=True))
        vent = torch.maximum(vent, torch.sigmoid((1 - vr) / 0.08))
    tissue = tissue * (1 - vent) + 0.15 * vent
    image = brain * tissue + skull * u(0.85, 1.0).view(bshape)
    bias = 1 + 0.12 * smooth_noise(num, spatial_shape, 3, g)  # intensity inhomogeneity
    image = image * bias + noise * torch.randn(image.shape, generator=g) * head
    return image.clamp(0, 1).numpy().astype(np.float32)
