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

from monai_mtlmad.transforms.functional import normalised_grid, sample_foreground_centres, smooth_noise, warp

__all__ = ["LESION_KINDS", "head_phantoms", "insert_lesions"]


def head_phantoms(
    num: int, spatial_shape: Sequence[int], seed: int = 0, noise: float = 0.03, return_brain: bool = False
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Generate ``num`` head-like phantoms.

    Args:
        num: number of subjects.
        spatial_shape: ``(H, W)`` or ``(H, W, D)``.
        seed: every subject is a deterministic function of ``seed``.
        noise: standard deviation of the additive Gaussian noise.
        return_brain: also return the brain (inside the skull) masks.

    Returns:
        float32 array ``(num, 1, *spatial_shape)`` in [0, 1], background 0; with ``return_brain`` also a bool
        array of the same shape.
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
    image = image.clamp(0, 1).numpy().astype(np.float32)
    return (image, brain.numpy() > 0.5) if return_brain else image


LESION_KINDS = ("tumour", "infarct", "bleed")


def insert_lesions(
    images: np.ndarray, brains: np.ndarray, seed: int = 0, kinds: Sequence[str] = LESION_KINDS
) -> tuple[np.ndarray, np.ndarray]:
    """Put one lesion in each phantom, of kinds unlike the pseudo-anomalies the learner trains on.

    - ``tumour``: a ring-enhancing mass (bright rim, dark necrotic core) that pushes the tissue around it;
    - ``infarct``: a flat, sharply bounded hypo-intense region with the texture gone (a half-ellipsoid wedge);
    - ``bleed``: a small, very bright focus with a dark rim.

    Args:
        images: ``(N, 1, *spatial)`` from :func:`head_phantoms`.
        brains: their brain masks.
        seed: lesion placement and size.
        kinds: kinds to cycle through (image ``i`` gets ``kinds[i % len(kinds)]``).

    Returns:
        ``(images_with_lesions, masks)``, masks bool ``(N, 1, *spatial)`` inside the brain.
    """
    unknown = set(kinds) - set(LESION_KINDS)
    if unknown:
        raise ValueError(f"unknown lesion kinds {sorted(unknown)}; known: {LESION_KINDS}.")
    g = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(images).float()
    brain = torch.from_numpy(brains).float()
    n, dims, spatial = x.shape[0], x.ndim - 2, x.shape[2:]
    inner = -torch.nn.functional.max_pool2d(-brain, 9, 1, 4) if dims == 2 else -torch.nn.functional.max_pool3d(
        -brain, 9, 1, 4
    )  # brain eroded, so lesions stay inside
    centres = sample_foreground_centres(inner[:, 0] > 0.5, g)
    grid = normalised_grid(spatial, "cpu").unsqueeze(0)
    out, masks = x.clone(), torch.zeros_like(x, dtype=torch.bool)
    for i in range(n):  # each lesion kind is its own recipe; a loop over a handful of test images
        kind = kinds[i % len(kinds)]
        c = centres[i].view(1, dims, *([1] * dims))
        size = {"tumour": 0.22, "infarct": 0.26, "bleed": 0.08}[kind] * (0.8 + 0.4 * float(torch.rand(1, generator=g)))
        axes = size * (0.75 + 0.5 * torch.rand(1, dims, *([1] * dims), generator=g))
        r = torch.sqrt((((grid - c) / axes) ** 2).sum(1, keepdim=True))[0]
        img = out[i : i + 1]
        if kind == "tumour":
            img = warp(img, -0.35 * torch.sigmoid((1.4 - r) / 0.1) * (grid - c))  # mass effect
            rim = torch.sigmoid((r - 0.7) / 0.04) * torch.sigmoid((1 - r) / 0.04)
            core = torch.sigmoid((0.7 - r) / 0.04)
            img = img * (1 - rim - core) + 0.95 * rim + 0.2 * core
            lesion = r < 1.0
        elif kind == "infarct":
            direction = torch.randn(1, dims, *([1] * dims), generator=g)
            half = ((grid - c) * direction).sum(1, keepdim=True)[0] > 0
            lesion = (r < 1.0) & half
            img = torch.where(lesion, 0.3 + 0.01 * torch.randn(img.shape, generator=g), img)
        else:
            halo = (r >= 1.0) & (r < 1.4)
            lesion = r < 1.0
            img = torch.where(lesion, torch.full_like(img, 1.0), torch.where(halo, 0.12 * torch.ones_like(img), img))
        lesion = lesion & (brain[i] > 0.5)
        out[i] = torch.where(lesion | (brain[i] > 0.5), img[0], out[i])  # skull and background stay as they were
        masks[i] = lesion
    return out.clamp(0, 1).numpy().astype(np.float32), masks.numpy()
