# Copyright (c) monai-mtlmad contributors
# Licensed under the Apache License, Version 2.0
"""Batched tensor operations behind the proxy-task views.

Every function here works on a whole batch ``(B, C, *spatial)`` at once, on any device, for 2D and 3D. The
per-sample MONAI transforms in :mod:`monai_mtlmad.transforms.array` call them with ``B == 1``; the proxy tasks
in :mod:`monai_mtlmad.tasks` call them on training batches, so that task views are built on the accelerator
without per-sample Python loops. Randomness always comes from an explicit :class:`torch.Generator` so that a
seeded transform or task gives the same view on every run.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "ensure_tuple_dims",
    "roll_batch",
    "lattice_masks",
    "random_patch_masks",
    "maximal_hamming_permutations",
    "jigsaw_tile_shape",
    "jigsaw_shuffle",
    "jigsaw_unshuffle",
    "jigsaw_position_target",
    "pose_table",
    "apply_pose",
    "invert_pose",
    "tilt_batch",
    "normalised_grid",
    "smooth_noise",
    "warp",
    "sample_foreground_centres",
    "intensity_foreground",
    "coarse_noise",
    "irregular_blob_masks",
    "PSEUDO_ANOMALY_KINDS",
    "synthesize_pseudo_anomalies",
]


def ensure_tuple_dims(value: int | Sequence[int], spatial_dims: int, name: str = "value") -> tuple[int, ...]:
    """Broadcast an int to ``spatial_dims`` entries, or check a sequence has that many."""
    if isinstance(value, int):
        return (value,) * spatial_dims
    value = tuple(int(v) for v in value)
    if len(value) != spatial_dims:
        raise ValueError(f"{name} must have {spatial_dims} entries, got {value}.")
    return value


def _uniform(shape, low, high, generator, device) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, generator=generator, device=device)


# --------------------------------------------------------------------------------------------- inpainting masks
def _patch_indices(spatial_shape: Sequence[int], patch_size: Sequence[int], device) -> list[torch.Tensor]:
    return [torch.arange(s, device=device) // p for s, p in zip(spatial_shape, patch_size)]


def lattice_masks(
    spatial_shape: Sequence[int], patch_size: int | Sequence[int], stride: int = 2, device=None
) -> torch.Tensor:
    """The ``K = stride ** spatial_dims`` complementary inpainting masks used at inference.

    The image is cut into a grid of patches; mask ``k`` hides every patch whose grid coordinates modulo ``stride``
    equal ``unravel(k)``. Each masked patch is surrounded by visible ones, and together the K masks hide every
    pixel/voxel exactly once.

    Args:
        spatial_shape: ``(H, W)`` or ``(H, W, D)``.
        patch_size: patch side, an int or one per spatial dimension.
        stride: lattice period in patches along every dimension.
        device: device of the result.

    Returns:
        bool tensor ``(K, *spatial_shape)``, True where hidden.
    """
    dims = len(spatial_shape)
    patch_size = ensure_tuple_dims(patch_size, dims, "patch_size")
    idx = _patch_indices(spatial_shape, patch_size, device)
    code = torch.zeros(tuple(spatial_shape), dtype=torch.long, device=device)
    for d, i in enumerate(idx):  # code = ravel_multi_index(coords mod stride)
        shape = [1] * dims
        shape[d] = -1
        code = code * stride + (i % stride).view(shape)
    k = torch.arange(stride**dims, device=device).view(-1, *([1] * dims))
    return code.unsqueeze(0) == k


def random_patch_masks(
    batch: int,
    spatial_shape: Sequence[int],
    patch_size: int | Sequence[int],
    ratio: torch.Tensor,
    generator: torch.Generator | None = None,
    lattice_prob: float = 0.5,
    stride: int = 2,
    device=None,
) -> torch.Tensor:
    """Random patch masks with a random grid offset per sample.

    A sample is, with probability ``lattice_prob``, one of the inference lattice masks (see :func:`lattice_masks`),
    shifted by a random offset, so that the inference views are in the training distribution; otherwise each patch
    is hidden independently with probability ``ratio[b]``.

    Returns:
        bool tensor ``(B, *spatial_shape)``.
    """
    dims = len(spatial_shape)
    patch_size = ensure_tuple_dims(patch_size, dims, "patch_size")
    grid = [s // p + 2 for s, p in zip(spatial_shape, patch_size)]
    bern = torch.rand((batch, *grid), generator=generator, device=device) < ratio.view(-1, *([1] * dims))
    # lattice pattern on the patch grid: coords mod stride == a random target per sample
    code = torch.zeros(tuple(grid), dtype=torch.long, device=device)
    for d, g in enumerate(grid):
        shape = [1] * dims
        shape[d] = -1
        code = code * stride + (torch.arange(g, device=device) % stride).view(shape)
    target = torch.randint(0, stride**dims, (batch,), generator=generator, device=device)
    lattice = code.unsqueeze(0) == target.view(-1, *([1] * dims))
    use_lattice = torch.rand((batch,), generator=generator, device=device) < lattice_prob
    patches = torch.where(use_lattice.view(-1, *([1] * dims)), lattice, bern)
    # expand patches to pixels with a per-sample offset, by advanced indexing (no per-sample loop)
    index = [torch.arange(batch, device=device).view(-1, *([1] * dims))]
    for d, (s, p) in enumerate(zip(spatial_shape, patch_size)):
        offset = torch.randint(0, p, (batch, 1), generator=generator, device=device)
        pos = (torch.arange(s, device=device).view(1, -1) + offset) // p  # (B, s)
        shape = [batch] + [1] * dims
        shape[d + 1] = s
        index.append(pos.view(shape))
    return patches[tuple(index)]


# --------------------------------------------------------------------------------------------------- jigsaw
def maximal_hamming_permutations(num_tiles: int, num_permutations: int, seed: int = 0) -> torch.Tensor:
    """A fixed set of maximally different tile permutations (Noroozi & Favaro, ECCV 2016).

    Greedy farthest-point selection under the Hamming distance among random candidates, starting from the
    identity (row 0), so the same ``(num_tiles, num_permutations, seed)`` always gives the same table.

    Returns:
        long tensor ``(num_permutations, num_tiles)``; row ``i`` maps view position to original tile.
    """
    if num_permutations < 1 or num_permutations > math.factorial(num_tiles):
        raise ValueError(f"num_permutations must be in [1, {num_tiles}!], got {num_permutations}.")
    rng = np.random.default_rng(seed)
    if math.factorial(num_tiles) <= 5000:
        candidates = np.array(list(itertools.permutations(range(num_tiles))))
    else:
        candidates = np.unique(
            np.argsort(rng.random((max(2000, 40 * num_permutations), num_tiles)), axis=1), axis=0
        )
    chosen = [np.arange(num_tiles)]
    min_dist = (candidates != chosen[0]).sum(1)
    for _ in range(num_permutations - 1):
        best = int(np.argmax(min_dist))
        chosen.append(candidates[best])
        min_dist = np.minimum(min_dist, (candidates != candidates[best]).sum(1))
    return torch.as_tensor(np.stack(chosen), dtype=torch.long)


def jigsaw_tile_shape(spatial_shape: Sequence[int], grid: Sequence[int]) -> tuple[int, ...]:
    """Tile side per dimension; the last ``S % g`` pixels of a dimension stay in place."""
    tiles = tuple(s // g for s, g in zip(spatial_shape, grid))
    if min(tiles) < 1:
        raise ValueError(f"image of spatial shape {tuple(spatial_shape)} is too small for a jigsaw grid {grid}.")
    return tiles


def _to_tiles(x: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """(B, C, *spatial) region divisible by grid -> (B, C, n_tiles, *tile)."""
    b, c = x.shape[:2]
    dims = len(grid)
    tile = [s // g for s, g in zip(x.shape[2:], grid)]
    split = [v for pair in zip(grid, tile) for v in pair]
    y = x.reshape(b, c, *split)
    order = [0, 1] + [2 + 2 * d for d in range(dims)] + [3 + 2 * d for d in range(dims)]
    return y.permute(order).reshape(b, c, math.prod(grid), *tile)


def _from_tiles(t: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    b, c = t.shape[:2]
    dims = len(grid)
    tile = t.shape[3:]
    y = t.reshape(b, c, *grid, *tile)
    order = [0, 1] + [v for d in range(dims) for v in (2 + d, 2 + dims + d)]
    return y.permute(order).reshape(b, c, *[g * s for g, s in zip(grid, tile)])


def _region(spatial_shape, grid):
    tile = jigsaw_tile_shape(spatial_shape, grid)
    return tuple(slice(0, g * t) for g, t in zip(grid, tile))


def jigsaw_shuffle(x: torch.Tensor, permutations: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """Shuffle tiles: view tile at position ``p`` is original tile ``permutations[b, p]``.

    Args:
        x: ``(B, C, *spatial)``.
        permutations: long ``(B, n_tiles)``.
        grid: tiles per spatial dimension.

    Returns:
        the shuffled batch, same shape; pixels beyond the last full tile stay in place.
    """
    region = (slice(None), slice(None)) + _region(x.shape[2:], grid)
    tiles = _to_tiles(x[region], grid)
    index = permutations.to(x.device).view(*permutations.shape[:1], 1, -1, *([1] * len(grid)))
    shuffled = torch.gather(tiles, 2, index.expand(-1, tiles.shape[1], -1, *tiles.shape[3:]))
    out = x.clone()
    out[region] = _from_tiles(shuffled, grid)
    return out


def roll_batch(x: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """``torch.roll`` with its own shift per sample: ``out[b, :, i] = x[b, :, (i - shifts[b]) % size]``.

    Args:
        x: ``(B, C, *spatial)``.
        shifts: long ``(B, D)``, one shift per sample and spatial dimension (negative shifts roll back).
    """
    out = x
    for d in range(x.ndim - 2):
        size = x.shape[2 + d]
        index = (torch.arange(size, device=x.device).view(1, size) - shifts[:, d : d + 1].to(x.device)) % size
        shape = [x.shape[0]] + [1] * (x.ndim - 1)
        shape[2 + d] = size
        out = torch.gather(out, 2 + d, index.view(shape).expand_as(out))
    return out


def jigsaw_unshuffle(x: torch.Tensor, permutations: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`jigsaw_shuffle` (also used to bring per-pixel error maps back to the image frame)."""
    return jigsaw_shuffle(x, torch.argsort(permutations, dim=1), grid)


def jigsaw_position_target(
    permutations: torch.Tensor, spatial_shape: Sequence[int], grid: Sequence[int], ignore_index: int = -1
) -> torch.Tensor:
    """Dense target: at every pixel of view tile ``p``, the original position ``permutations[b, p]``.

    Returns:
        long tensor ``(B, *spatial_shape)``; ``ignore_index`` outside the tiled region.
    """
    dims = len(grid)
    tile = jigsaw_tile_shape(spatial_shape, grid)
    pos = torch.zeros(tuple(spatial_shape), dtype=torch.long, device=permutations.device)
    inside = torch.ones(tuple(spatial_shape), dtype=torch.bool, device=permutations.device)
    for d, (s, g, t) in enumerate(zip(spatial_shape, grid, tile)):
        shape = [1] * dims
        shape[d] = -1
        coord = torch.arange(s, device=permutations.device) // t
        inside = inside & (coord < g).view(shape)
        pos = pos * g + coord.clamp(max=g - 1).view(shape)
    target = permutations[:, pos]  # (B, *spatial)
    return torch.where(inside, target, torch.full_like(target, ignore_index))


# ---------------------------------------------------------------------------------------------- orientation
def pose_table(spatial_dims: int, num_poses: int) -> list[tuple[tuple[int, ...], tuple[bool, ...]]]:
    """Poses as signed axis permutations ``(axis order, flips)``; identity first.

    - 2D: 4 (the rotations by multiples of 90 degrees) or 8 (rotations and reflections, the dihedral group).
    - 3D: 24 (all rotations of the cube) or 4 (rotations about the first spatial axis, for anisotropic volumes).

    A pose maps ``x`` to ``flip(x.permute(order), flips)``; proper rotations have determinant +1.
    """
    allowed = {2: (4, 8), 3: (4, 24)}
    if spatial_dims not in allowed or num_poses not in allowed[spatial_dims]:
        raise ValueError(f"num_poses for spatial_dims={spatial_dims} must be one of {allowed.get(spatial_dims)}.")
    poses = []
    for order in itertools.permutations(range(spatial_dims)):
        parity = np.linalg.det(np.eye(spatial_dims)[list(order)])
        for flips in itertools.product((False, True), repeat=spatial_dims):
            det = parity * (-1) ** sum(flips)
            if num_poses == 8 or det > 0:
                if spatial_dims == 3 and num_poses == 4 and (order[0] != 0 or flips[0]):
                    continue
                poses.append((tuple(order), tuple(flips)))
    assert len(poses) == num_poses
    return poses


def _check_pose_shape(x: torch.Tensor, order: Sequence[int]) -> None:
    spatial = x.shape[2:]
    if any(spatial[o] != spatial[d] for d, o in enumerate(order)):
        raise ValueError(
            f"pose {tuple(order)} would change the spatial shape {tuple(spatial)}: rotations that swap axes need "
            "equal sizes along them (crop or pad to a square/cube, or use a pose subset that keeps them)."
        )


def _pose_apply(x, pose, inverse: bool):
    order, flips = pose
    flip_dims = [2 + d for d, f in enumerate(flips) if f]
    if not inverse:
        y = x.permute(0, 1, *[2 + o for o in order])
        return torch.flip(y, flip_dims) if flip_dims else y
    y = torch.flip(x, flip_dims) if flip_dims else x
    return y.permute(0, 1, *[2 + int(o) for o in np.argsort(order)])


def _apply_poses(x: torch.Tensor, pose_ids: torch.Tensor, table, inverse: bool) -> torch.Tensor:
    out = torch.empty_like(x)
    for pid in torch.unique(pose_ids).tolist():  # a loop over at most 24 poses, never over samples
        pose = table[pid]
        _check_pose_shape(x, pose[0])
        sel = (pose_ids == pid).to(x.device)
        out[sel] = _pose_apply(x[sel], pose, inverse)
    return out


def apply_pose(x: torch.Tensor, pose_ids: torch.Tensor, table) -> torch.Tensor:
    """Put sample ``b`` of ``x (B, C, *spatial)`` in pose ``table[pose_ids[b]]``."""
    return _apply_poses(x, pose_ids, table, inverse=False)


def invert_pose(x: torch.Tensor, pose_ids: torch.Tensor, table) -> torch.Tensor:
    """Undo :func:`apply_pose`."""
    return _apply_poses(x, pose_ids, table, inverse=True)


def tilt_batch(x: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate sample ``b`` of ``x (B, C, *spatial)`` by ``degrees[b]`` in the plane of its last two spatial axes
    (bilinear), and keep only the disc (cylinder in 3D) inscribed in that plane, so that neither the corners the
    rotation brings in nor the corners it cuts off tell the angle.

    Rotations are in pixel units (a non-square plane is not sheared); zeros fill what comes from outside.
    """
    b, dims, dev = x.shape[0], x.ndim - 2, x.device
    h, w = x.shape[-2:]
    rad = torch.deg2rad(degrees.to(dev, torch.float32))
    cos, sin = torch.cos(rad), torch.sin(rad)
    theta = torch.zeros(b, dims, dims + 1, device=dev)
    theta[:, range(dims), range(dims)] = 1.0
    # affine_grid's first two coordinates are the last two axes (x: width, y: height) in [-1, 1]; scale to pixels,
    # rotate, scale back
    theta[:, 0, 0], theta[:, 0, 1] = cos, -sin * h / w
    theta[:, 1, 0], theta[:, 1, 1] = sin * w / h, cos
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False).to(x.dtype)
    yy = (torch.arange(h, device=dev) - (h - 1) / 2) ** 2
    xx = (torch.arange(w, device=dev) - (w - 1) / 2) ** 2
    disc = (yy[:, None] + xx[None, :]) <= (min(h, w) / 2) ** 2
    return out * disc.to(out.dtype)


# ------------------------------------------------------------------------------------------- pseudo-anomalies
PSEUDO_ANOMALY_KINDS = ("foreign", "intensity", "deformation")


def smooth_noise(
    batch: int, spatial_shape: Sequence[int], cells: int, generator: torch.Generator | None = None, device=None
) -> torch.Tensor:
    """Smooth random field in [-1, 1]: uniform noise on a ``cells``-per-side lattice, interpolated up.

    Returns:
        ``(B, 1, *spatial_shape)`` float tensor.
    """
    dims = len(spatial_shape)
    low = 2 * torch.rand((batch, 1) + (cells,) * dims, generator=generator, device=device) - 1
    mode = "bilinear" if dims == 2 else "trilinear"
    return F.interpolate(low, size=tuple(spatial_shape), mode=mode, align_corners=True)


def normalised_grid(spatial_shape: Sequence[int], device) -> torch.Tensor:
    """Coordinates in [-1, 1] per spatial dimension, ``(D, *spatial)``, in tensor axis order."""
    axes = [torch.linspace(-1, 1, s, device=device) for s in spatial_shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"))


def intensity_foreground(x: torch.Tensor, threshold: float = 0.1) -> torch.Tensor:
    """``(B, *spatial)`` bool: pixels of ``x (B, C, *spatial)`` (channel mean) above ``threshold`` of each image's
    intensity range; a cheap, batched tissue mask for building training views."""
    m = x.mean(1)
    flat = m.reshape(m.shape[0], -1)
    lo, hi = flat.min(1).values, flat.max(1).values
    return m > (lo + threshold * (hi - lo)).view(-1, *([1] * (m.ndim - 1)))


def coarse_noise(
    shape: Sequence[int], cell: int | Sequence[int], std: torch.Tensor | float, generator=None, device=None
) -> torch.Tensor:
    """Gaussian noise drawn on a coarse lattice (one value per ``cell`` pixels) and interpolated up: low-frequency
    noise that a denoiser can only remove by knowing what normal anatomy looks like (Kascenas et al., MIDL 2022).

    Args:
        shape: ``(B, C, *spatial)`` of the output.
        cell: lattice period in pixels (int or one per spatial dimension).
        std: standard deviation, a float or ``(B,)``.

    Returns:
        ``(B, C, *spatial)`` float tensor.
    """
    b, c, spatial = shape[0], shape[1], tuple(shape[2:])
    cells = ensure_tuple_dims(cell, len(spatial), "cell")
    low_shape = tuple(max(1, -(-s // k)) for s, k in zip(spatial, cells))
    low = torch.randn((b, c, *low_shape), generator=generator, device=device)
    mode = "bilinear" if len(spatial) == 2 else "trilinear"
    noise = F.interpolate(low, size=spatial, mode=mode, align_corners=False)
    return noise * torch.as_tensor(std, dtype=noise.dtype, device=noise.device).reshape(-1, *([1] * (len(shape) - 1)))


def sample_foreground_centres(
    foreground: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Draw one point per sample, uniformly inside its foreground (anywhere if it has none).

    Args:
        foreground: ``(B, *spatial)`` bool or weights.

    Returns:
        ``(B, D)`` centres in normalised [-1, 1] coordinates, tensor axis order.
    """
    b, spatial = foreground.shape[0], foreground.shape[1:]
    weights = foreground.reshape(b, -1).float() + 1e-6
    flat = torch.multinomial(weights, 1, generator=generator).squeeze(1)
    coords = torch.stack(torch.unravel_index(flat, tuple(spatial)), dim=1).float()
    sizes = torch.tensor([max(s - 1, 1) for s in spatial], device=foreground.device, dtype=torch.float32)
    return coords / sizes * 2 - 1


def irregular_blob_masks(
    centres: torch.Tensor,
    radii: torch.Tensor,
    spatial_shape: Sequence[int],
    irregularity: float = 0.5,
    softness: float = 0.08,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Soft masks of irregular blobs: an ellipsoid whose border is perturbed by smooth noise.

    Args:
        centres: ``(B, D)`` in normalised coordinates.
        radii: ``(B, D)`` semi-axes in normalised units (1.0 is half the image side).
        spatial_shape: output spatial shape.
        irregularity: amplitude of the border perturbation, relative to the radius.
        softness: width of the soft border, relative to the radius.

    Returns:
        ``(B, 1, *spatial_shape)`` in [0, 1].
    """
    dims = len(spatial_shape)
    grid = normalised_grid(spatial_shape, centres.device).unsqueeze(0)  # (1, D, *sp)
    shape = (-1, dims) + (1,) * dims
    r = torch.sqrt((((grid - centres.view(shape)) / radii.view(shape)) ** 2).sum(1, keepdim=True))
    noise = smooth_noise(centres.shape[0], spatial_shape, 6, generator, centres.device)
    field = 1.0 - r + irregularity * noise * torch.clamp(r, max=1.5)
    return torch.sigmoid(field / softness)


def warp(x: torch.Tensor, displacement: torch.Tensor, padding_mode: str = "border") -> torch.Tensor:
    """Sample ``x`` at ``identity + displacement``; displacement ``(B, D, *sp)`` in normalised tensor-axis units."""
    dims = x.ndim - 2
    grid = normalised_grid(x.shape[2:], x.device).unsqueeze(0) + displacement
    grid = grid.flip(1).permute(0, *range(2, 2 + dims), 1)  # grid_sample wants (x, y[, z]) = reversed axes
    return F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode=padding_mode, align_corners=True)


def synthesize_pseudo_anomalies(
    x: torch.Tensor,
    kinds: torch.Tensor,
    centres: torch.Tensor,
    radii: torch.Tensor,
    strength: torch.Tensor,
    generator: torch.Generator | None = None,
    source: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Blend one synthetic local anomaly into each sample.

    Kinds (index into :data:`PSEUDO_ANOMALY_KINDS`, ``-1`` for none):

    - ``foreign``: a patch of ``source`` (another image, e.g. the batch rolled by one) taken at a random other
      location, blended in through the blob mask with opacity ``strength``.
    - ``intensity``: a smooth intensity change of signed amplitude ``strength`` (in image intensity units,
      modulated by smooth noise) inside the blob.
    - ``deformation``: a local radial push or pull (mass effect / retraction) of amplitude ``strength``
      (fraction of the blob radius) inside the blob.

    Args:
        x: ``(B, C, *spatial)`` clean images.
        kinds: long ``(B,)``.
        centres: ``(B, D)`` normalised blob centres.
        radii: ``(B, D)`` normalised blob semi-axes.
        strength: ``(B,)`` opacity (foreign, in (0, 1]), signed contrast (intensity) or push (deformation).
        generator: random source for shapes and offsets.
        source: ``(B, C, *spatial)`` images to take foreign patches from; defaults to ``x`` itself.

    Returns:
        ``(views, targets)``: views like ``x``; targets ``(B, 1, *spatial)`` soft masks in [0, 1].
    """
    b, dims = x.shape[0], x.ndim - 2
    spatial = x.shape[2:]
    bshape = (-1,) + (1,) * (dims + 1)
    mask = irregular_blob_masks(centres, radii, spatial, generator=generator)
    source = x if source is None else source
    # foreign: the source translated so that another location lands under the blob
    shift = _uniform((b, dims), -0.6, 0.6, generator, x.device)
    shift = shift + 0.3 * torch.sign(shift)
    moved = warp(source, shift.view(b, dims, *([1] * dims)).expand(-1, -1, *spatial), "reflection")
    opacity = strength.clamp(0, 1).view(bshape)
    foreign = (1 - opacity * mask) * x + opacity * mask * moved
    # intensity: smooth, textured change of signed contrast
    texture = 0.75 + 0.25 * smooth_noise(b, spatial, 8, generator, x.device)
    intensity = x + strength.view(bshape) * mask * texture
    # deformation: radial displacement that vanishes outside the blob
    grid = normalised_grid(spatial, x.device).unsqueeze(0)
    radial = grid - centres.view(-1, dims, *([1] * dims))
    displacement = -strength.view(bshape) * mask * radial
    deformed = warp(x, displacement)

    k = kinds.view(bshape).to(x.device)
    views = torch.where(k == 0, foreign, torch.where(k == 1, intensity, torch.where(k == 2, deformed, x)))
    targets = torch.where(k[:, :1] == 0, opacity * mask, mask) * (k[:, :1] >= 0)
    return views, targets
