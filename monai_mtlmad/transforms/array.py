# Copyright (c) monai-mtlmad contributors
# Licensed under the Apache License, Version 2.0
"""Proxy-task views as MONAI array transforms.

Each transform takes one channel-first image ``(C, *spatial)`` (numpy or torch, CPU or CUDA, 2D or 3D, any
number of channels) and returns its task view plus the target. Each also has a ``batched`` method that builds
views for a whole batch ``(B, C, *spatial)`` at once with a :class:`torch.Generator`: the proxy tasks use it
during training, and ``__call__`` is the same code run on a batch of one, seeded from the transform's
``self.R`` so that :meth:`set_random_state` makes it reproducible.

Images are expected scaled to about [0, 1] (e.g. by ``ScaleIntensity`` or a percentile scaling) since the
pseudo-anomaly contrasts are given in those units.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from monai.config import NdarrayOrTensor
from monai.transforms import RandomizableTransform, Transform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor

from monai_mtlmad.transforms import functional as Fn

__all__ = [
    "RandInpaintMask", "RandJigsaw", "RandOrientation", "RandPseudoAnomaly", "RandCoarseNoise", "PseudoLabel",
]


class _BatchedRandomizable(RandomizableTransform):
    """Shared plumbing: draw a torch generator from ``self.R`` and run ``batched`` on a batch of one."""

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, prob: float = 1.0) -> None:
        RandomizableTransform.__init__(self, prob)
        self._seed = 0

    def randomize(self, data=None) -> None:
        super().randomize(None)
        self._seed = int(self.R.randint(0, 2**31 - 1))

    def _generator(self, device) -> torch.Generator:
        return torch.Generator(device=device).manual_seed(self._seed)

    @staticmethod
    def _as_batch(img: NdarrayOrTensor) -> torch.Tensor:
        x = convert_to_tensor(img, track_meta=False)
        if not torch.is_floating_point(x):
            x = x.float()
        if x.ndim not in (3, 4):
            raise ValueError(f"expected a channel-first 2D or 3D image (C, H, W[, D]), got shape {tuple(x.shape)}.")
        return x.unsqueeze(0)


class RandInpaintMask(_BatchedRandomizable):
    """Hide random patches of the image; the network must inpaint them.

    Training masks are either random patches (each hidden with a probability drawn from ``ratio_range``) or, with
    probability ``lattice_prob``, one of the ``stride ** spatial_dims`` complementary inference masks, with a random
    grid offset. At inference (``mask_index`` set, or :meth:`inference_masks`) the complementary lattice masks are
    used: together they hide every pixel/voxel exactly once.

    Args:
        patch_size: patch side in pixels/voxels (int or one per spatial dimension).
        ratio_range: range of the fraction of hidden patches for random masks.
        lattice_prob: probability that a training mask is a (shifted) lattice mask.
        stride: lattice period in patches; ``K = stride ** spatial_dims`` inference masks.
        fill_value: value written into hidden pixels (all channels).
        mask_index: deterministic mode: always use inference mask ``mask_index`` (no randomness).

    Returns from ``__call__``:
        ``(view, mask)``: view like the input; mask ``(1, *spatial)`` float32, 1 where hidden.
    """

    def __init__(
        self,
        patch_size: int | Sequence[int] = 16,
        ratio_range: tuple[float, float] = (0.15, 0.5),
        lattice_prob: float = 0.5,
        stride: int = 2,
        fill_value: float = 0.0,
        mask_index: int | None = None,
    ) -> None:
        super().__init__(prob=1.0)
        self.patch_size = patch_size
        self.ratio_range = ratio_range
        self.lattice_prob = lattice_prob
        self.stride = stride
        self.fill_value = fill_value
        self.mask_index = mask_index

    def num_inference_masks(self, spatial_dims: int) -> int:
        return self.stride**spatial_dims

    def inference_masks(self, spatial_shape: Sequence[int], device=None) -> torch.Tensor:
        """The K complementary masks ``(K, *spatial_shape)`` (bool), each pixel hidden by exactly one."""
        return Fn.lattice_masks(spatial_shape, self.patch_size, self.stride, device)

    def inference_views(self, x: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The deterministic views of ``x (B, C, *spatial)``: ``(views, masks (B, 1, *spatial) float)`` for each of
        the K complementary masks."""
        for mask in self.inference_masks(x.shape[2:], x.device):
            m = mask.expand(x.shape[0], *mask.shape)
            yield self.apply_mask(x, m), m.unsqueeze(1).float()

    def apply_mask(self, x: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Hide ``masks (B, *spatial)`` in ``x (B, C, *spatial)``."""
        return torch.where(masks.unsqueeze(1), torch.as_tensor(self.fill_value, dtype=x.dtype, device=x.device), x)

    def batched(self, x: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Views and masks for a batch: ``x (B, C, *spatial)`` -> ``(views, masks (B, 1, *spatial) float)``."""
        b, spatial = x.shape[0], x.shape[2:]
        if self.mask_index is not None:
            masks = self.inference_masks(spatial, x.device)[self.mask_index].expand(b, *spatial)
        else:
            ratio = self.ratio_range[0] + (self.ratio_range[1] - self.ratio_range[0]) * torch.rand(
                b, generator=generator, device=x.device
            )
            masks = Fn.random_patch_masks(
                b, spatial, self.patch_size, ratio, generator, self.lattice_prob, self.stride, x.device
            )
        return self.apply_mask(x, masks), masks.unsqueeze(1).float()

    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> tuple[NdarrayOrTensor, NdarrayOrTensor]:
        if randomize:
            self.randomize()
        x = self._as_batch(img)
        view, mask = self.batched(x, self._generator(x.device))
        return convert_to_dst_type(view[0], img)[0], convert_to_dst_type(mask[0], img, dtype=torch.float32)[0]


class RandJigsaw(_BatchedRandomizable):
    """Cut the image into a grid of tiles and shuffle them by one of a fixed set of permutations.

    The permutation set is chosen once, from ``permutation_seed``, as maximally different permutations (greedy
    max-min Hamming distance), with the identity as permutation 0. The target gives at every pixel the original
    position of the tile it lies in (dense), and the permutation id is kept too. Pixels beyond the last full tile
    (when the size is not divisible by the grid) stay in place with target ``ignore_index``.

    With ``random_shift`` the image is first rolled by a random offset of up to one tile per dimension, so the
    tile grid falls anywhere on the anatomy (a harder task, and the one that scoring over shifted grids asks for:
    see ``views_for(..., shifts)``, whose maps :meth:`unshuffle` rolls back, so no tile boundary stays in place).

    Args:
        grid: tiles per spatial dimension (int or one per dimension); 3 gives 3x3 in 2D, 3x3x3 in 3D.
        num_permutations: size of the permutation set.
        permutation_seed: seed of the permutation set (not of the draws).
        permutation_index: deterministic mode: always use this permutation.
        ignore_index: target value outside the tiled region.
        random_shift: roll each image by a random offset below one tile before cutting it.

    Returns from ``__call__``:
        ``(view, target)``: target ``(1, *spatial)`` int64 original tile positions. The drawn permutation id is in
        ``self.last_permutation``.
    """

    def __init__(
        self,
        grid: int | Sequence[int] = 3,
        num_permutations: int = 24,
        permutation_seed: int = 0,
        permutation_index: int | None = None,
        ignore_index: int = -1,
        random_shift: bool = False,
    ) -> None:
        super().__init__(prob=1.0)
        self.random_shift = random_shift
        self.grid = grid
        self.num_permutations = num_permutations
        self.permutation_seed = permutation_seed
        self.permutation_index = permutation_index
        self.ignore_index = ignore_index
        self._tables: dict[int, torch.Tensor] = {}
        self.last_permutation = 0

    def grid_for(self, spatial_dims: int) -> tuple[int, ...]:
        return Fn.ensure_tuple_dims(self.grid, spatial_dims, "grid")

    def num_tiles(self, spatial_dims: int) -> int:
        return int(np.prod(self.grid_for(spatial_dims)))

    def permutations(self, spatial_dims: int, device=None) -> torch.Tensor:
        """The fixed permutation table ``(num_permutations, n_tiles)``."""
        n = self.num_tiles(spatial_dims)
        if n not in self._tables:
            self._tables[n] = Fn.maximal_hamming_permutations(n, self.num_permutations, self.permutation_seed)
        return self._tables[n].to(device)

    def tile_shape(self, spatial_shape: Sequence[int]) -> tuple[int, ...]:
        """Tile side per dimension for images of ``spatial_shape``."""
        return Fn.jigsaw_tile_shape(spatial_shape, self.grid_for(len(spatial_shape)))

    def views_for(
        self, x: torch.Tensor, perm_ids: torch.Tensor, shifts: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Shuffle ``x (B, C, *spatial)`` by the given permutation ids, after rolling it by ``shifts`` (long
        ``(B, D)``) when given; returns ``(views, targets (B, 1, *sp))``."""
        dims = x.ndim - 2
        grid = self.grid_for(dims)
        perms = self.permutations(dims, x.device)[perm_ids.to(x.device)]
        views = Fn.jigsaw_shuffle(x if shifts is None else Fn.roll_batch(x, shifts), perms, grid)
        target = Fn.jigsaw_position_target(perms, x.shape[2:], grid, self.ignore_index)
        return views, target.unsqueeze(1)

    def unshuffle(self, maps: torch.Tensor, perm_ids: torch.Tensor, shifts: torch.Tensor | None = None) -> torch.Tensor:
        """Bring per-pixel maps of shuffled views ``(B, C, *spatial)`` back to the image frame (rolled back by
        ``shifts`` when the views were rolled)."""
        dims = maps.ndim - 2
        perms = self.permutations(dims, maps.device)[perm_ids.to(maps.device)]
        out = Fn.jigsaw_unshuffle(maps, perms, self.grid_for(dims))
        return out if shifts is None else Fn.roll_batch(out, -shifts)

    def batched(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x (B, C, *spatial)`` -> ``(views, targets (B, 1, *spatial) long, permutation ids (B,))``."""
        b = x.shape[0]
        if self.permutation_index is not None:
            ids = torch.full((b,), self.permutation_index, dtype=torch.long, device=x.device)
        else:
            ids = torch.randint(0, self.num_permutations, (b,), generator=generator, device=x.device)
        shifts = None
        if self.random_shift:
            tile = torch.tensor(self.tile_shape(x.shape[2:]), device=x.device, dtype=torch.float32)
            shifts = (torch.rand(b, len(tile), generator=generator, device=x.device) * tile).long()
        views, target = self.views_for(x, ids, shifts)
        return views, target, ids

    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> tuple[NdarrayOrTensor, NdarrayOrTensor]:
        if randomize:
            self.randomize()
        x = self._as_batch(img)
        view, target, ids = self.batched(x, self._generator(x.device))
        self.last_permutation = int(ids[0])
        return convert_to_dst_type(view[0], img)[0], convert_to_dst_type(target[0], img, dtype=torch.int64)[0]


class RandOrientation(_BatchedRandomizable):
    """Put the image in one of a fixed set of poses; the network must tell which (anatomy has a canonical pose).

    Poses (see :func:`monai_mtlmad.transforms.functional.pose_table`): 2D, 4 rotations by 90 degrees or 8 with
    reflections; 3D, the 24 rotations of the cube, or 4 rotations about the first spatial axis for volumes that
    are not cubes. Pose 0 is the identity. Rotations that swap axes need equal sizes along them.

    Args:
        num_poses: size of the pose set; default 4 in 2D and 24 in 3D.
        pose_index: deterministic mode: always use this pose.

    Returns from ``__call__``:
        ``(view, pose)``: ``pose`` an int64 scalar tensor / array.
    """

    def __init__(self, num_poses: int | None = None, pose_index: int | None = None) -> None:
        super().__init__(prob=1.0)
        self.num_poses = num_poses
        self.pose_index = pose_index

    def poses(self, spatial_dims: int) -> list:
        return Fn.pose_table(spatial_dims, self.num_poses or (4 if spatial_dims == 2 else 24))

    def count(self, spatial_dims: int) -> int:
        return len(self.poses(spatial_dims))

    def views_for(self, x: torch.Tensor, pose_ids: torch.Tensor) -> torch.Tensor:
        return Fn.apply_pose(x, pose_ids, self.poses(x.ndim - 2))

    def inverse(self, x: torch.Tensor, pose_ids: torch.Tensor) -> torch.Tensor:
        """Undo the poses of ``x (B, C, *spatial)``."""
        return Fn.invert_pose(x, pose_ids, self.poses(x.ndim - 2))

    def batched(self, x: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``x (B, C, *spatial)`` -> ``(views, pose ids (B,))``."""
        b, dims = x.shape[0], x.ndim - 2
        if self.pose_index is not None:
            ids = torch.full((b,), self.pose_index, dtype=torch.long, device=x.device)
        else:
            ids = torch.randint(0, self.count(dims), (b,), generator=generator, device=x.device)
        return self.views_for(x, ids), ids

    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> tuple[NdarrayOrTensor, NdarrayOrTensor]:
        if randomize:
            self.randomize()
        x = self._as_batch(img)
        view, ids = self.batched(x, self._generator(x.device))
        return convert_to_dst_type(view[0], img)[0], convert_to_dst_type(ids[0], img, dtype=torch.int64)[0]


class RandPseudoAnomaly(_BatchedRandomizable):
    """Blend a synthetic local anomaly into the image; the target is its soft mask.

    With probability ``prob`` one anomaly of a kind drawn from ``kinds`` is placed at a point drawn uniformly
    inside the foreground (intensity above ``foreground_threshold`` of the image's range); otherwise the image
    is returned unchanged with an empty target, so the network also learns that clean tissue is normal.

    Kinds and documented ranges (images scaled to about [0, 1]; sizes relative to the image side):

    - ``foreign``: a patch of another image (``source``; by default the same image at another location), blob
      radius in ``radius_range``, opacity in ``opacity_range``;
    - ``intensity``: a smooth hyper- or hypo-intense blob of contrast ``+-contrast_range``;
    - ``deformation``: a local radial push or pull of ``+-push_range`` times the blob radius.

    Blob borders are irregular (an ellipsoid perturbed by smooth noise, soft edges). ``difficulty`` in [0, 1]
    scales the contrast and opacity ranges down from their upper end (a curriculum: 0 gives the most visible
    anomalies, 1 the full ranges).

    Returns from ``__call__``:
        ``(view, target)``: target ``(1, *spatial)`` float32 in [0, 1].
    """

    def __init__(
        self,
        prob: float = 0.8,
        kinds: Sequence[str] = Fn.PSEUDO_ANOMALY_KINDS,
        radius_range: tuple[float, float] = (0.04, 0.2),
        opacity_range: tuple[float, float] = (0.5, 1.0),
        contrast_range: tuple[float, float] = (0.1, 0.5),
        push_range: tuple[float, float] = (0.3, 0.7),
        foreground_threshold: float = 0.1,
        difficulty: float = 1.0,
    ) -> None:
        super().__init__(prob=prob)
        unknown = set(kinds) - set(Fn.PSEUDO_ANOMALY_KINDS)
        if unknown or not kinds:
            raise ValueError(f"kinds must be a non-empty subset of {Fn.PSEUDO_ANOMALY_KINDS}, got {kinds}.")
        self.kind_ids = torch.tensor([Fn.PSEUDO_ANOMALY_KINDS.index(k) for k in kinds])
        self.radius_range = radius_range
        self.opacity_range = opacity_range
        self.contrast_range = contrast_range
        self.push_range = push_range
        self.foreground_threshold = foreground_threshold
        self.difficulty = difficulty

    def foreground(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, *spatial)`` bool: pixels above ``foreground_threshold`` of each image's intensity range."""
        return Fn.intensity_foreground(x, self.foreground_threshold)

    def _range(self, r, b, generator, device):
        low = r[1] - self.difficulty * (r[1] - r[0])  # the curriculum narrows toward the visible end
        return low + (r[1] - low) * torch.rand(b, generator=generator, device=device)

    def batched(
        self, x: torch.Tensor, generator: torch.Generator | None = None, source: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``x (B, C, *spatial)`` -> ``(views, targets (B, 1, *spatial))``.

        ``source`` gives the images foreign patches come from; by default the batch rolled by one (another
        subject) when ``B > 1``, the image itself otherwise.
        """
        b, dims, dev = x.shape[0], x.ndim - 2, x.device
        kinds = self.kind_ids.to(dev)[torch.randint(0, len(self.kind_ids), (b,), generator=generator, device=dev)]
        kinds = torch.where(torch.rand(b, generator=generator, device=dev) < self.prob, kinds, -1)
        centres = Fn.sample_foreground_centres(self.foreground(x), generator)
        base = self.radius_range[0] + (self.radius_range[1] - self.radius_range[0]) * torch.rand(
            b, 1, generator=generator, device=dev
        )
        aspect = 0.7 + 0.6 * torch.rand(b, dims, generator=generator, device=dev)
        radii = 2 * base * aspect  # normalised units: the image side spans 2
        sign = torch.where(torch.rand(b, generator=generator, device=dev) < 0.5, -1.0, 1.0)
        strength = torch.where(
            kinds == 0,
            self._range(self.opacity_range, b, generator, dev),
            sign
            * torch.where(
                kinds == 1,
                self._range(self.contrast_range, b, generator, dev),
                self._range(self.push_range, b, generator, dev),
            ),
        )
        if source is None:
            source = x.roll(1, dims=0) if b > 1 else x
        return Fn.synthesize_pseudo_anomalies(x, kinds, centres, radii, strength, generator, source)

    def __call__(
        self, img: NdarrayOrTensor, source: NdarrayOrTensor | None = None, randomize: bool = True
    ) -> tuple[NdarrayOrTensor, NdarrayOrTensor]:
        if randomize:
            self.randomize()
        x = self._as_batch(img)
        src = None if source is None else self._as_batch(source).to(x)
        view, target = self.batched(x, self._generator(x.device), src)
        return convert_to_dst_type(view[0], img)[0], convert_to_dst_type(target[0], img, dtype=torch.float32)[0]


class RandCoarseNoise(_BatchedRandomizable):
    """Add coarse (low-resolution) Gaussian noise on the foreground; the network must restore the clean image.

    The denoising proxy of Kascenas et al. ("Denoising autoencoders for unsupervised anomaly detection in brain
    MRI", MIDL 2022): noise drawn on a lattice of one value per ``cell`` pixels and interpolated up is too smooth to
    be filtered away locally, so the denoiser must learn what normal anatomy looks like; at test time its residual
    on the unmodified image marks what it takes for noise, i.e. what is not normal. Noise is added where the image
    is above ``foreground_threshold`` of its range (tissue, not the air around it).

    Args:
        prob: probability that an image gets noise (the others teach that a clean image is its own restoration).
        cell: noise lattice period in pixels/voxels (int or one per spatial dimension); default 8 (2D) or 6 (3D).
        std_range: range of the noise standard deviation (intensity units of [0, 1]-scaled images).
        foreground_threshold: tissue threshold (share of each image's intensity range).

    Returns from ``__call__``:
        ``(view, noise)``: the noisy view like the input; the added noise ``(C, *spatial)`` float32.
    """

    def __init__(
        self,
        prob: float = 1.0,
        cell: int | Sequence[int] | None = None,
        std_range: tuple[float, float] = (0.1, 0.3),
        foreground_threshold: float = 0.1,
    ) -> None:
        super().__init__(prob=prob)
        self.cell, self.std_range, self.foreground_threshold = cell, std_range, foreground_threshold

    def batched(self, x: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``x (B, C, *spatial)`` -> ``(views, noise (B, C, *spatial))``."""
        b, dev = x.shape[0], x.device
        lo, hi = self.std_range
        std = lo + (hi - lo) * torch.rand(b, generator=generator, device=dev)
        std = std * (torch.rand(b, generator=generator, device=dev) < self.prob)
        cell = self.cell or (8 if x.ndim == 4 else 6)
        noise = Fn.coarse_noise(x.shape, cell, std, generator, dev).to(x.dtype)
        noise = noise * Fn.intensity_foreground(x, self.foreground_threshold).unsqueeze(1)
        return x + noise, noise

    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> tuple[NdarrayOrTensor, NdarrayOrTensor]:
        if randomize:
            self.randomize()
        x = self._as_batch(img)
        view, noise = self.batched(x, self._generator(x.device))
        return convert_to_dst_type(view[0], img)[0], convert_to_dst_type(noise[0], img, dtype=torch.float32)[0]


class PseudoLabel(Transform):
    """Labels computed from the clean image without any network, as targets for the pseudo-label task.

    Methods:

    - ``multiotsu``: scikit-image multi-Otsu classes of the channel mean (``classes`` tissue classes: background,
      darker and brighter tissue for brain MRI or body CT);
    - ``edges``: a binary edge map, Sobel gradient magnitude above its Otsu threshold.

    The labels are deterministic, so MONAI's ``CacheDataset``/``PersistentDataset`` cache them per image when the
    transform sits before the random ones.

    Returns:
        ``(1, *spatial)`` int64 labels in ``[0, num_classes)``.
    """

    backend = [TransformBackends.NUMPY]

    def __init__(self, method: str = "multiotsu", classes: int = 3) -> None:
        if method not in ("multiotsu", "edges"):
            raise ValueError(f"method must be 'multiotsu' or 'edges', got {method!r}.")
        self.method = method
        self.classes = classes

    @property
    def num_classes(self) -> int:
        return self.classes if self.method == "multiotsu" else 2

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        from skimage.filters import sobel, threshold_multiotsu, threshold_otsu

        x = convert_to_tensor(img, track_meta=False).detach().float().cpu().numpy().mean(0)
        x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)  # never crash on what checks let through
        if self.method == "multiotsu":
            levels = np.unique(x)
            if levels.size <= self.classes:
                # too few grey levels for multi-Otsu (binary or near-constant images): one class per level, in order
                labels = np.searchsorted(levels, x).astype(np.int64)
            else:
                labels = np.digitize(x, threshold_multiotsu(x, classes=self.classes)).astype(np.int64)
        else:
            mag = sobel(x)
            labels = (mag > threshold_otsu(mag)).astype(np.int64) if np.ptp(mag) > 0 else np.zeros(x.shape, np.int64)
        return convert_to_dst_type(labels[None], img, dtype=torch.int64)[0]
