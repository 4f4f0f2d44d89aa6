# Copyright (c) monai-mtlmad contributors
# Licensed under the Apache License, Version 2.0
"""Synthetic anatomy phantoms for smoke tests, demos, task checks and the harder evaluation sets.

These are **phantoms, not clinical data**. Heads: ellipsoidal, with a skull rim (and, in the harder variant, a
scalp layer and slices taken at different levels), grey/white-matter-like texture, ventricles, intensity
inhomogeneity and noise. Chests: CT-like axial slices (2D) or volumes (3D) in a lung window: body outline with
subcutaneous fat and muscle, ribs, spine, mediastinum and aorta, lungs with a vessel tree. Lesion generators put
in kinds that the pseudo-anomaly task never generates. Everything varies from subject to subject, is a
deterministic function of a seed and exists so that every capability can be exercised with no data and no download.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from monai_mtlmad.transforms.functional import normalised_grid, sample_foreground_centres, smooth_noise, warp

__all__ = [
    "LESION_KINDS", "HEAD_LESION_KINDS", "CHEST_LESION_KINDS", "head_phantoms", "insert_lesions", "chest_phantoms",
    "insert_chest_lesions",
]


def head_phantoms(
    num: int,
    spatial_shape: Sequence[int],
    seed: int = 0,
    noise: float = 0.03,
    return_brain: bool = False,
    size_range: tuple[float, float] = (1.0, 1.0),
    scalp: bool = False,
    bias: float = 0.12,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Generate ``num`` head-like phantoms.

    Args:
        num: number of subjects.
        spatial_shape: ``(H, W)`` or ``(H, W, D)``.
        seed: every subject is a deterministic function of ``seed``.
        noise: standard deviation of the additive Gaussian noise.
        return_brain: also return the brain (inside the skull) masks.
        size_range: head size factor per subject (slices near the vertex hold less tissue than mid-brain ones, so
            the amount of tissue varies as in real slice stacks); (1, 1) keeps the demo's sizes.
        scalp: add a scalp (bright fat layer outside the skull, a dark gap, then the skull), as on T1 MRI that is
            not skull-stripped.
        bias: amplitude of the smooth intensity inhomogeneity.

    Returns:
        float32 array ``(num, 1, *spatial_shape)`` in [0, 1], background 0; with ``return_brain`` also a bool
        array of the same shape.
    """
    g = torch.Generator().manual_seed(seed)
    g_extra = torch.Generator().manual_seed(seed + 7919)  # options draw apart, so the demo's subjects stay as they were
    dims = len(spatial_shape)

    def u(lo, hi, *shape):
        return lo + (hi - lo) * torch.rand((num, *shape), generator=g)

    bshape = (num, 1) + (1,) * dims
    grid = normalised_grid(spatial_shape, "cpu").unsqueeze(0)  # (1, D, *sp)
    centre = u(-0.06, 0.06, dims).view(num, dims, *([1] * dims))
    axes = u(0.68, 0.86, dims).view(num, dims, *([1] * dims))
    lo, hi = size_range
    axes = axes * (lo + (hi - lo) * torch.rand(num, generator=g_extra)).view(num, 1, *([1] * dims))
    if scalp:  # the skull sits inside a scalp of ~8 % of the head radius
        axes = axes * 0.92
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
    field = 1 + bias * smooth_noise(num, spatial_shape, 3, g)  # intensity inhomogeneity
    if scalp:  # bright fat from r = 1.03 to 1.087 (= 1 / 0.92), a thin dark galea between skull and fat
        fat = ((r >= 1.03) & (r < 1 / 0.92)).float()
        image = image + fat * (0.7 + 0.1 * smooth_noise(num, spatial_shape, 11, g_extra))
        head = ((r < 1 / 0.92)).float()
    image = image * field + noise * torch.randn(image.shape, generator=g) * head
    image = image.clamp(0, 1).numpy().astype(np.float32)
    return (image, brain.numpy() > 0.5) if return_brain else image


LESION_KINDS = ("tumour", "infarct", "bleed")  # the demo's
HEAD_LESION_KINDS = LESION_KINDS + ("edema",)


def _lesion_inputs(images, organs, seed, kinds, known, contrast_range, erosion):
    """What both lesion generators start from: images and organ masks as tensors, the organ eroded by ``erosion``
    of the image side (lesions start inside it), each lesion's share of its full contrast (drawn apart from
    placement, so (1, 1) keeps the demo) and the placement generator."""
    unknown = set(kinds) - set(known)
    if unknown:
        raise ValueError(f"unknown lesion kinds {sorted(unknown)}; known: {known}.")
    lo, hi = contrast_range
    contrast = lo + (hi - lo) * torch.rand(images.shape[0], generator=torch.Generator().manual_seed(seed + 104729))
    organ = torch.from_numpy(organs).float()
    return torch.from_numpy(images).float(), organ, _erode(organ, erosion), contrast, torch.Generator().manual_seed(seed)


def _erode(mask: torch.Tensor, fraction: float) -> torch.Tensor:
    """``mask (N, 1, *spatial)`` eroded by a cube of ``fraction`` of the smallest side (odd, at least 3 wide)."""
    width = max(3, int(round(fraction * min(mask.shape[2:]))) // 2 * 2 + 1)
    pool = torch.nn.functional.max_pool2d if mask.ndim == 4 else torch.nn.functional.max_pool3d
    return -pool(-mask, width, 1, width // 2)


def _min_axes(spatial) -> torch.Tensor:
    """Lesion semi-axes of at least 1.5 pixels/voxels (normalised units), so small volumes still hold every lesion."""
    return torch.tensor([3.0 / max(s - 1, 1) for s in spatial]).view(1, -1, *([1] * len(spatial)))


def insert_lesions(
    images: np.ndarray,
    brains: np.ndarray,
    seed: int = 0,
    kinds: Sequence[str] = LESION_KINDS,
    contrast_range: tuple[float, float] = (1.0, 1.0),
) -> tuple[np.ndarray, np.ndarray]:
    """Put one lesion in each phantom, of kinds unlike the pseudo-anomalies the learner trains on.

    - ``tumour``: a ring-enhancing mass (bright rim, dark necrotic core) that pushes the tissue around it;
    - ``infarct``: a flat, sharply bounded hypo-intense region with the texture gone (a half-ellipsoid wedge);
    - ``bleed``: a small, very bright focus with a dark rim;
    - ``edema``: a large, diffuse, faintly hyper-intense region with soft borders (the mask is where the change
      reaches half its peak).

    Args:
        images: ``(N, 1, *spatial)`` from :func:`head_phantoms`.
        brains: their brain masks.
        seed: lesion placement and size.
        kinds: kinds to cycle through (image ``i`` gets ``kinds[i % len(kinds)]``), from :data:`HEAD_LESION_KINDS`.
        contrast_range: each lesion is blended in at a share of its full contrast drawn from this range (subtle
            lesions make a harder set); the mask stays the lesion's extent.

    Returns:
        ``(images_with_lesions, masks)``, masks bool ``(N, 1, *spatial)`` inside the brain.
    """
    x, brain, inner, contrast, g = _lesion_inputs(images, brains, seed, kinds, HEAD_LESION_KINDS, contrast_range, 9 / 128)
    n, dims, spatial = x.shape[0], x.ndim - 2, x.shape[2:]
    centres = sample_foreground_centres(inner[:, 0] > 0.5, g)
    grid = normalised_grid(spatial, "cpu").unsqueeze(0)
    out, masks = x.clone(), torch.zeros_like(x, dtype=torch.bool)
    floor = _min_axes(spatial)
    for i in range(n):  # each lesion kind is its own recipe; a loop over a handful of test images
        kind = kinds[i % len(kinds)]
        c = centres[i].view(1, dims, *([1] * dims))
        size = {"tumour": 0.22, "infarct": 0.26, "bleed": 0.08, "edema": 0.3}[kind] * (0.8 + 0.4 * float(torch.rand(1, generator=g)))
        axes = size * (0.75 + 0.5 * torch.rand(1, dims, *([1] * dims), generator=g))
        axes = torch.maximum(axes, floor)
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
        elif kind == "bleed":
            halo = (r >= 1.0) & (r < 1.4)
            lesion = r < 1.0
            img = torch.where(lesion, torch.full_like(img, 1.0), torch.where(halo, 0.12 * torch.ones_like(img), img))
        else:
            change = torch.exp(-2.0 * r**2)  # Gaussian profile, half its peak at r = 0.59
            img = img + 0.22 * change
            lesion = change > 0.5
        lesion = lesion & (brain[i] > 0.5)
        img = out[i : i + 1] + float(contrast[i]) * (img - out[i : i + 1])
        out[i] = torch.where(lesion | (brain[i] > 0.5), img[0], out[i])  # skull and background stay as they were
        masks[i] = lesion
    return out.clamp(0, 1).numpy().astype(np.float32), masks.numpy()


CHEST_LESION_KINDS = ("nodule", "ground_glass", "pleural_mass", "consolidation")


def chest_phantoms(
    num: int, spatial_shape: Sequence[int], seed: int = 0, noise: float = 0.02, return_lungs: bool = False
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Generate ``num`` chest-CT-like phantoms in a lung window (air 0, lung ~0.1, fat ~0.35, soft tissue ~0.5,
    bone ~0.9).

    Axis 0 runs anterior to posterior, axis 1 right to left, axis 2 (3D) along the body; 2D images are axial
    slices. Slices are taken at different levels: lungs and heart grow and shrink, ribs move along the wall.

    Args:
        num: number of subjects.
        spatial_shape: ``(H, W)`` or ``(H, W, D)``.
        seed: every subject is a deterministic function of ``seed``.
        noise: standard deviation of the additive Gaussian noise (inside the body).
        return_lungs: also return the lung masks.

    Returns:
        float32 array ``(num, 1, *spatial_shape)`` in [0, 1] (air 0); with ``return_lungs`` also a bool array.
    """
    g = torch.Generator().manual_seed(seed)
    dims = len(spatial_shape)
    view = (num, 1) + (1,) * dims

    def u(lo, hi):
        return (lo + (hi - lo) * torch.rand(num, generator=g)).view(view)

    grid = normalised_grid(spatial_shape, "cpu").unsqueeze(0)
    y, x = grid[:, 0:1], grid[:, 1:2]
    z = grid[:, 2:3] if dims == 3 else torch.zeros_like(y)
    level = u(0.6, 1.0)  # how far into the lung fields the slice lies (3D: the middle of the volume)
    level = level * (1 - 0.35 * z**2)  # volumes: lungs taper towards both ends
    wobble = 0.03 * smooth_noise(num, spatial_shape, 4, g)
    body_r = torch.sqrt(((y - u(-0.05, 0.05)) / u(0.55, 0.68)) ** 2 + (x / u(0.85, 0.95)) ** 2) + wobble
    body = body_r < 1.0
    fat_in = u(0.86, 0.92)
    image = torch.where(body, 0.5 + 0.03 * smooth_noise(num, spatial_shape, 17, g), torch.zeros(()))
    image = torch.where(body & (body_r >= fat_in), 0.35 + 0.02 * smooth_noise(num, spatial_shape, 9, g), image)
    # ribs: short bony arcs inside the muscle layer, their positions cycling along the body
    angle = torch.atan2(y, x)
    ribs = (abs(body_r - fat_in + 0.07) < 0.025) & (torch.cos(11 * angle + 6 * z + u(0, 6.3)) > 0.55) & (y > -0.3)
    image = torch.where(ribs, torch.full_like(image, 0.9), image)
    # lungs: two ellipses, the right one larger; a vessel tree from thresholded fine noise
    lungs = torch.zeros_like(body)
    for side, width in ((-1.0, u(0.3, 0.36)), (1.0, u(0.26, 0.32))):
        cx = side * u(0.38, 0.44)
        lr = torch.sqrt(((y - 0.02) / (0.5 * level)) ** 2 + ((x - cx) / (width * (0.7 + 0.3 * level))) ** 2)
        lungs |= (lr + 0.6 * wobble) < 1.0
    lungs &= body_r < fat_in - 0.12
    vessels = (smooth_noise(num, spatial_shape, 22, g) + 0.5 * smooth_noise(num, spatial_shape, 9, g)) > 0.72
    lung_tissue = 0.09 + 0.02 * smooth_noise(num, spatial_shape, 30, g)
    image = torch.where(lungs, torch.where(vessels, 0.45 * torch.ones_like(image), lung_tissue), image)
    # mediastinum: heart (anterior, left of midline), aorta (posterior left), spine (posterior midline)
    heart = torch.sqrt(((y + 0.2) / (0.32 * level)) ** 2 + ((x - u(0.02, 0.1)) / (0.3 * level)) ** 2) < 1.0
    image = torch.where(heart, 0.55 + 0.02 * smooth_noise(num, spatial_shape, 13, g), image)
    aorta = torch.sqrt((y - 0.2) ** 2 + (x - 0.12) ** 2) < u(0.06, 0.08)
    image = torch.where(aorta, torch.full_like(image, 0.58), image)
    spine_y = u(0.38, 0.46)
    vertebra = torch.sqrt(((y - spine_y) / 0.11) ** 2 + (x / 0.1) ** 2)
    image = torch.where(vertebra < 1.0, torch.where(vertebra < 0.6, 0.7 * torch.ones_like(image), 0.9 * torch.ones_like(image)), image)
    image = image + noise * torch.randn(image.shape, generator=g) * body
    image = image.clamp(0, 1).numpy().astype(np.float32)
    return (image, lungs.numpy()) if return_lungs else image


def insert_chest_lesions(
    images: np.ndarray,
    lungs: np.ndarray,
    seed: int = 0,
    kinds: Sequence[str] = CHEST_LESION_KINDS,
    contrast_range: tuple[float, float] = (1.0, 1.0),
) -> tuple[np.ndarray, np.ndarray]:
    """Put one lung lesion in each chest phantom:

    - ``nodule``: a small solid round focus of soft-tissue density in the lung;
    - ``ground_glass``: a hazy, faint increase of lung density with soft borders (vessels stay visible);
    - ``pleural_mass``: a soft-tissue mass on the chest wall bulging into the lung (the rim a body mask erodes);
    - ``consolidation``: a dense irregular region of lung, vessels gone.

    Args:
        images: ``(N, 1, *spatial)`` from :func:`chest_phantoms`.
        lungs: their lung masks.
        seed: lesion placement and size.
        kinds: kinds to cycle through, from :data:`CHEST_LESION_KINDS`.
        contrast_range: share of each lesion's full contrast (see :func:`insert_lesions`).

    Returns:
        ``(images_with_lesions, masks)``, masks bool ``(N, 1, *spatial)``.
    """
    x, lung, inner, contrast, g = _lesion_inputs(images, lungs, seed, kinds, CHEST_LESION_KINDS, contrast_range, 7 / 128)
    n, dims, spatial = x.shape[0], x.ndim - 2, x.shape[2:]
    edge = lung - inner  # the lung's border, where pleural masses sit
    grid = normalised_grid(spatial, "cpu").unsqueeze(0)
    out, masks = x.clone(), torch.zeros_like(x, dtype=torch.bool)
    floor = _min_axes(spatial)
    for i in range(n):  # one recipe per kind, a handful of test images
        kind = kinds[i % len(kinds)]
        where = edge[i, 0] if kind == "pleural_mass" else inner[i, 0]
        c = sample_foreground_centres((where > 0.5).unsqueeze(0), g).view(1, dims, *([1] * dims))
        size = {"nodule": 0.05, "ground_glass": 0.14, "pleural_mass": 0.1, "consolidation": 0.13}[kind]
        axes = torch.maximum(size * (0.75 + 0.5 * torch.rand(1, dims, *([1] * dims), generator=g)), floor)
        bumpy = 0.25 * smooth_noise(1, spatial, 6, g)[0] if kind in ("consolidation", "ground_glass") else 0.0
        r = torch.sqrt((((grid - c) / axes) ** 2).sum(1, keepdim=True))[0] + bumpy
        img = out[i]
        if kind == "nodule":
            lesion = r < 1.0
            img = torch.where(lesion, 0.5 + 0.02 * torch.randn(img.shape, generator=g), img)
        elif kind == "ground_glass":
            change = torch.sigmoid((1.0 - r) / 0.12)
            img = img + 0.16 * change * lung[i]
            lesion = (change > 0.5) & (lung[i] > 0.5)
        elif kind == "pleural_mass":
            lesion = (r < 1.0) & ((lung[i] > 0.5) | (img > 0.2))  # in the lung and the wall it grows from
            img = torch.where(lesion, 0.52 + 0.02 * torch.randn(img.shape, generator=g), img)
        else:
            lesion = (r < 1.0) & (lung[i] > 0.5)
            img = torch.where(lesion, 0.42 + 0.03 * smooth_noise(1, spatial, 20, g)[0], img)
        lesion = lesion & ((lung[i] > 0.5) | (kind == "pleural_mass"))
        out[i] = out[i] + float(contrast[i]) * (img - out[i])
        masks[i] = lesion
    return out.clamp(0, 1).numpy().astype(np.float32), masks.numpy()
