# Copyright (c) monai-mtlmad contributors
# Licensed under the Apache License, Version 2.0
"""Preprocessing per modality as MONAI transforms: a deterministic part (cacheable) and a random part.

Presets:

- ``png``: 8-bit exports (BMAD's Liver, RESC, OCT2017, RSNA): grayscale, ``/255``;
- ``mri``: intensities scaled by the 0.5-99.5 percentiles of the foreground (background excluded);
- ``ct``: Hounsfield window ``ct_window`` (default the abdominal/liver window -160..240 HU);
- ``rgb``: colour images (histopathology), ``/255`` per channel.

Every input is checked right after loading (:class:`~monai_mtlmad.data.checks.CheckImage`: NaN, constant, binary,
wrong dimensionality, tiny, outside the preset's value range), so nothing unusable is ever scored.

Geometry: 2D images are resized to ``spatial_size`` (BMAD's protocol). 3D volumes are first brought to a
canonical pose (``Orientationd`` to RAS), so that the orientation task learns anatomy rather than how a file
happens to be stored, optionally cropped to the body's bounding box (``crop_to_body``, off by default: the
anatomy, not the scanner's empty field, fills the training grid), then resampled with their voxel spacing
respected: to a fixed ``spacing`` (mm) and centred in a ``spatial_size`` field of view, or, by default, to the
isotropic spacing at which the whole (cropped) volume fits ``spatial_size`` (its physical aspect ratio kept). Every
spatial step is a MONAI invertible transform, so maps computed at the training size go back to each input's own grid
with ``Compose.inverse``.

Masks follow the image with nearest neighbours and are binarised; the tissue mask goes under
``"image_foreground"``. The random part is mild (small affine, intensity scaling) and never flips: anatomy's
canonical pose is what the orientation task learns. It moves ``"image_pseudo_label"`` with the image when a
:class:`~monai_mtlmad.transforms.PseudoLabeld` put it there (cached labels stay aligned).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor
from monai.data.utils import affine_to_spacing
from monai.transforms import (
    Compose,
    CropForegroundd,
    EnsureChannelFirst,
    EnsureChannelFirstd,
    EnsureTyped,
    Invertd,
    LoadImage,
    LoadImaged,
    MapTransform,
    Orientationd,
    RandAffined,
    RandScaleIntensityd,
    Resized,
    ResizeWithPadOrCropd,
    ScaleIntensityRanged,
    Spacingd,
    Transform,
)
from monai.transforms.utils import generate_spatial_bounding_box
from monai.utils import convert_to_dst_type

from monai_mtlmad.data.checks import CheckImaged
from monai_mtlmad.transforms.foreground import ForegroundMaskd, foreground_mask
from monai_mtlmad.transforms.keywise import KeyWised
from monai_mtlmad.transforms.functional import ensure_tuple_dims

__all__ = [
    "PRESETS",
    "PRESET_RIM",
    "default_rim",
    "AsGrayscale",
    "AsGrayscaled",
    "DropAlpha",
    "DropAlphad",
    "ScaleIntensityInForeground",
    "ScaleIntensityInForegroundd",
    "LoadMaskd",
    "FitSpacingd",
    "CropToBodyd",
    "InvertMap",
    "preprocessing",
]

PRESETS = ("png", "mri", "ct", "rgb")
# foreground erosion per preset: MRI volumes are often not skull-stripped (skull and scalp form a bright rim that
# would dominate every map); CT keeps its rim (pleura and chest wall, where tumours sit), and BMAD's 8-bit exports
# (skull-stripped BraTS, liver CT, chest X-ray, OCT) and histopathology have no such rim
PRESET_RIM = {"png": 0.0, "mri": 0.06, "ct": 0.0, "rgb": 0.0}


def default_rim(preset: str) -> float:
    """The foreground erosion (fraction of the image side) that suits ``preset`` (see :data:`PRESET_RIM`)."""
    if preset not in PRESET_RIM:
        raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}.")
    return PRESET_RIM[preset]


class AsGrayscale(Transform):
    """``(C, *spatial)`` -> ``(1, *spatial)`` channel mean (grayscale data stored as RGB, e.g. BraTS PNGs); the
    alpha channel of grey + alpha (2 channels) and RGBA (4) pictures is left out."""

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        if img.shape[0] == 1:
            return img
        img = DropAlpha()(img)
        if isinstance(img, np.ndarray):
            return img.mean(0, keepdims=True)
        return img.float().mean(0, keepdim=True)


class DropAlpha(Transform):
    """``(C, *spatial)`` pictures: the alpha channel of grey + alpha (C = 2) and RGBA (C = 4) left out."""

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        return img[:-1] if img.shape[0] in (2, 4) else img


class DropAlphad(KeyWised):
    """Dictionary-based :class:`DropAlpha`."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, DropAlpha(), allow_missing_keys=allow_missing_keys)


class AsGrayscaled(KeyWised):
    """Dictionary-based :class:`AsGrayscale`."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, AsGrayscale(), allow_missing_keys=allow_missing_keys)


class ScaleIntensityInForeground(Transform):
    """Map the ``lower``..``upper`` percentiles of the pixels above the image minimum (the foreground of a
    zero-background scan) to 0..1, clipped; the background stays at 0."""

    def __init__(self, lower: float = 0.5, upper: float = 99.5) -> None:
        self.lower, self.upper = lower, upper

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        x = torch.as_tensor(img, dtype=torch.float32)
        fg = x > x.min()
        values = x[fg] if fg.any() else x.reshape(-1)
        lo, hi = (float(v) for v in torch.quantile(_subsample(values), torch.tensor([self.lower, self.upper]) / 100))
        out = ((x - lo) / max(hi - lo, 1e-8)).clamp(0, 1) * fg
        return convert_to_dst_type(out, img, dtype=torch.float32)[0]


def _subsample(v: torch.Tensor, limit: int = 1_000_000) -> torch.Tensor:
    return v if v.numel() <= limit else v[:: v.numel() // limit + 1]


class ScaleIntensityInForegroundd(KeyWised):
    """Dictionary-based :class:`ScaleIntensityInForeground`."""

    def __init__(self, keys: KeysCollection, lower: float = 0.5, upper: float = 99.5, allow_missing_keys: bool = False):
        super().__init__(keys, ScaleIntensityInForeground(lower, upper), allow_missing_keys=allow_missing_keys)


class LoadMaskd(MapTransform):
    """Load ``data[key]`` as a binary mask ``(1, *spatial)`` like ``data[reference]``; an empty mask where the
    entry is None (normal images). A mask whose shape differs from the image's is an error naming both files."""

    def __init__(self, keys: KeysCollection, reference: str = "image", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.reference = reference
        self.loader = LoadImage(image_only=True)
        self.channel_first = EnsureChannelFirst()

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        ref = d[self.reference]
        for key in self.keys:
            path = d.get(key)
            if path is None or (isinstance(path, str) and not path):
                d[key] = convert_to_dst_type(torch.zeros((1, *ref.shape[1:])), ref)[0]
                continue
            try:
                mask = self.channel_first(self.loader(path))
            except Exception as e:
                raise ValueError(f"{path}: cannot read this mask ({type(e).__name__}: {e}).") from e
            if mask.shape[1:] != ref.shape[1:]:
                src = getattr(ref, "meta", {}).get("filename_or_obj", self.reference)
                raise ValueError(f"{path}: mask shape {tuple(mask.shape[1:])} differs from image {src} {tuple(ref.shape[1:])}.")
            d[key] = (mask.amax(0, keepdim=True) > 0).float()
        return d


class FitSpacingd(Spacingd):
    """:class:`monai.transforms.Spacingd` to the isotropic spacing, chosen per image, at which the image's whole
    field of view fits ``spatial_size``: unlike a plain resize to a cube, anatomy keeps its physical proportions.
    Invertible like ``Spacingd`` (the spacing used is recorded in the image's transform history).

    Args:
        keys: keys to resample; the first present one sets the spacing (images and their masks share a grid).
        spatial_size: the grid the volume must fit, one size per spatial dimension.
        mode: interpolation per key (e.g. ``["bilinear", "nearest"]`` for image and mask).
    """

    def __init__(self, keys: KeysCollection, spatial_size: Sequence[int], mode="bilinear", allow_missing_keys: bool = False):
        super().__init__(keys, pixdim=1.0, mode=mode, padding_mode="zeros", allow_missing_keys=allow_missing_keys)
        self.spatial_size = np.asarray(spatial_size, dtype=np.float64)

    def __call__(self, data: Mapping[Hashable, torch.Tensor], lazy: bool | None = None) -> dict[Hashable, torch.Tensor]:
        ref = data[self.first_key(data)]
        dims = len(self.spatial_size)
        extent = np.asarray(ref.shape[1:], dtype=np.float64) * np.asarray(affine_to_spacing(ref.affine, dims))
        self.spacing_transform.pixdim = np.full(dims, float(np.max(extent / self.spatial_size)))
        return super().__call__(data, lazy)


class CropToBodyd(CropForegroundd):
    """:class:`monai.transforms.CropForegroundd` to the body's bounding box (Otsu threshold, largest connected
    component: :func:`~monai_mtlmad.transforms.foreground_mask`), widened by ``margin`` of the box's extent on each
    side (padded with zeros where that leaves the image), so that a head or trunk small in its scan fills the
    training field of view. Invertible like ``CropForegroundd``: maps go back to the input grid with
    ``Compose.inverse``. An image without a body (blank) is kept whole.

    Args:
        keys: keys to crop (image and its masks share the box).
        source_key: the image the body is found in.
        margin: widening of the box on each side, as a fraction of its extent along that axis (room for the
            random affine's rotation and scaling, and for lesions on the body's surface).
    """

    def __init__(self, keys: KeysCollection, source_key: str = "image", margin: float = 0.05, allow_missing_keys: bool = False):
        super().__init__(keys, source_key, allow_smaller=False, allow_missing_keys=allow_missing_keys)
        self.body_margin = float(margin)

    def __call__(self, data: Mapping[Hashable, torch.Tensor], lazy: bool | None = None) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        img = d[self.source_key]
        body = foreground_mask(torch.as_tensor(img)[None])[0, 0].numpy()  # the whole image when none is found
        start, end = (np.asarray(corner) for corner in generate_spatial_bounding_box(body[None]))
        # no margin around a whole image (no body found): nothing to gain from padding it
        pad = np.zeros_like(start) if body.all() else np.ceil(self.body_margin * (end - start)).astype(int)
        # every key is cropped, even to the whole image: the inverse pops one operation per transform
        for key in self.key_iterator(d):
            d[key] = self.cropper.crop_pad(img=d[key], box_start=start - pad, box_end=end + pad, mode="constant")
        return d


class InvertMap:
    """Puts a map computed on the preprocessed grid back onto its input's grid: MONAI ``Invertd`` over the
    deterministic preprocessing (resize, spacing, crop to the body, RAS pose), with what the preprocessing cut away
    (outside the body's box, outside a fixed field of view) given the map's lowest value, not 0.

    ``Invertd`` pads with zeros, while a map's background sits at its lowest value (about -1 normal units): the map
    is inverted shifted to start at 0, then shifted back (resampling keeps constants), so no frame shows around the
    body and its background does not rank above tissue.

    Args:
        preprocessing: the deterministic ``Compose`` the image went through (:func:`preprocessing`).
    """

    def __init__(self, preprocessing: Compose) -> None:
        self.invert = Invertd("map", preprocessing, orig_keys="image", nearest_interp=False)

    def __call__(self, image: torch.Tensor, amap: torch.Tensor) -> torch.Tensor:
        """
        Args:
            image: the preprocessed ``MetaTensor`` (its transform history says what to undo).
            amap: ``(1, *spatial)`` map on the preprocessed grid.

        Returns:
            ``(1, *input spatial)`` ``MetaTensor`` in the input's grid, with its affine.
        """
        amap = amap.detach().float().cpu()
        low = amap.min()
        back = self.invert({"image": image, "map": MetaTensor(amap - low)})["map"]
        return back + low


def preprocessing(
    preset: str = "png",
    spatial_size: int | Sequence[int] = 256,
    spatial_dims: int = 2,
    channels: int = 1,
    rim: float = 0.0,
    ct_window: tuple[float, float] = (-160.0, 240.0),
    with_mask: bool = True,
    spacing: float | Sequence[float] | None = None,
    crop_to_body: bool = False,
) -> tuple[Compose, Compose]:
    """Deterministic and random preprocessing for datalist items ``{"image": path, "mask": path | None, ...}``.

    Args:
        preset: one of :data:`PRESETS`.
        spatial_size: training size (int or one per dimension).
        spatial_dims: 2 or 3.
        channels: 1 (grayscale, RGB-stored grayscale averaged) or 3.
        rim: foreground erosion (see :func:`~monai_mtlmad.transforms.foreground_mask`).
        ct_window: (min, max) Hounsfield units for ``ct``.
        with_mask: load ``"mask"`` (zeros where None) alongside the image.
        spacing: 3D only: voxel spacing in mm (one value or one per axis) to resample the RAS volume to before
            centring it in ``spatial_size`` (a fixed field of view of ``spatial_size * spacing`` mm: choose it to hold
            the anatomy); None fits each whole volume into ``spatial_size`` at an isotropic spacing.
        crop_to_body: 3D only: crop each RAS volume to its body's bounding box (:class:`CropToBodyd`) before the
            resampling, so that the anatomy, not the empty scanner field around it, fills ``spatial_size``. Off by
            default: on the harder 3D heads (a head of 26-51 mm in a 72 mm field of view) the crop raised the
            inpainting map on three paired seeds, yet the default (selected) map scored lower with it on all three,
            by 0.14 on average inside lesion volumes (docs/NOTES_session16.md). None counts as False.

    Returns:
        ``(deterministic, random)``: compose them, with a cache between, e.g.
        ``CacheDataset(items, deterministic)`` then ``random`` in the training loop or a second dataset.
    """
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}.")
    size = ensure_tuple_dims(spatial_size, spatial_dims, "spatial_size")
    keys = ["image", "mask"] if with_mask else ["image"]
    det = [LoadImaged("image", image_only=True), EnsureChannelFirstd("image")]
    value_range = (0, 255) if preset in ("png", "rgb") else None  # 8-bit pictures: 16-bit ones would saturate
    det.append(CheckImaged("image", spatial_dims=spatial_dims, channels=channels, value_range=value_range))
    if with_mask:
        det.append(LoadMaskd("mask"))
    det.append(AsGrayscaled("image") if channels == 1 else DropAlphad("image"))
    det.append(EnsureTyped("image", dtype=torch.float32))
    if preset in ("png", "rgb"):
        det.append(ScaleIntensityRanged("image", 0, 255, 0, 1, clip=True))
    elif preset == "mri":
        det.append(ScaleIntensityInForegroundd("image"))
    else:
        det.append(ScaleIntensityRanged("image", ct_window[0], ct_window[1], 0, 1, clip=True))
    if spatial_dims == 2:
        if spacing is not None or crop_to_body:
            raise ValueError("spacing and crop_to_body apply to 3D volumes only; 2D images are resized whole to "
                             "spatial_size.")
        det.append(Resized(keys, size, mode=["area", "nearest"][: len(keys)]))
    else:
        modes = ["bilinear", "nearest"][: len(keys)]
        # labels given as MONAI 1.6 defaults them: "RAS" keeps its meaning when that default changes, and users are
        # not warned on every volume that it will
        det.append(Orientationd(keys, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))))
        if crop_to_body:
            det.append(CropToBodyd(keys, "image"))
        if spacing is None:
            det.append(FitSpacingd(keys, size, mode=modes))
        else:
            det.append(Spacingd(keys, pixdim=spacing, mode=modes, padding_mode="zeros"))
        det.append(ResizeWithPadOrCropd(keys, size))
    det.append(ForegroundMaskd("image", rim=rim))
    moved = keys + ["image_foreground", "image_pseudo_label"]  # pseudo-labels when PseudoLabeld cached them
    rand = [
        RandAffined(
            moved,
            prob=0.5,
            rotate_range=0.08 if spatial_dims == 2 else (0.08, 0.08, 0.08),
            scale_range=0.05,
            mode=["bilinear"] + ["nearest"] * (len(moved) - 1),
            padding_mode="zeros",
            allow_missing_keys=True,
        ),
        RandScaleIntensityd("image", factors=0.1, prob=0.5),
    ]
    return Compose(det), Compose(rand)
