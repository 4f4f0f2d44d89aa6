# Copyright (c) monai-mtlmad contributors
# Licensed under the Apache License, Version 2.0
"""Preprocessing per modality as MONAI transforms: a deterministic part (cacheable) and a random part.

Presets:

- ``png``: 8-bit exports (BMAD's Liver, RESC, OCT2017, RSNA): grayscale, ``/255``;
- ``mri``: intensities scaled by the 0.5-99.5 percentiles of the foreground (background excluded);
- ``ct``: Hounsfield window ``ct_window`` (default the abdominal/liver window -160..240 HU);
- ``rgb``: colour images (histopathology), ``/255`` per channel.

Every preset then resizes to ``spatial_size`` (masks with nearest neighbours), binarises masks and writes the
tissue mask under ``"image_foreground"``. The random part is mild (small affine, intensity scaling) and never
flips: anatomy's canonical pose is what the orientation task learns.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import (
    Compose,
    EnsureChannelFirst,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImage,
    LoadImaged,
    MapTransform,
    RandAffined,
    RandScaleIntensityd,
    Resized,
    ScaleIntensityRanged,
    Transform,
)
from monai.utils import convert_to_dst_type

from monai_mtlmad.transforms.foreground import ForegroundMaskd
from monai_mtlmad.transforms.keywise import KeyWised
from monai_mtlmad.transforms.functional import ensure_tuple_dims

__all__ = [
    "PRESETS",
    "AsGrayscale",
    "AsGrayscaled",
    "ScaleIntensityInForeground",
    "ScaleIntensityInForegroundd",
    "LoadMaskd",
    "preprocessing",
]

PRESETS = ("png", "mri", "ct", "rgb")


class AsGrayscale(Transform):
    """``(C, *spatial)`` -> ``(1, *spatial)`` channel mean (grayscale data stored as RGB, e.g. BraTS PNGs)."""

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        if img.shape[0] == 1:
            return img
        if isinstance(img, np.ndarray):
            return img.mean(0, keepdims=True)
        return img.float().mean(0, keepdim=True)


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


def preprocessing(
    preset: str = "png",
    spatial_size: int | Sequence[int] = 256,
    spatial_dims: int = 2,
    channels: int = 1,
    rim: float = 0.0,
    ct_window: tuple[float, float] = (-160.0, 240.0),
    with_mask: bool = True,
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

    Returns:
        ``(deterministic, random)``: compose them, with a cache between, e.g.
        ``CacheDataset(items, deterministic)`` then ``random`` in the training loop or a second dataset.
    """
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}.")
    size = ensure_tuple_dims(spatial_size, spatial_dims, "spatial_size")
    keys = ["image", "mask"] if with_mask else ["image"]
    det = [LoadImaged("image", image_only=True), EnsureChannelFirstd("image")]
    if with_mask:
        det.append(LoadMaskd("mask"))
    if channels == 1:
        det.append(AsGrayscaled("image"))
    det.append(EnsureTyped("image", dtype=torch.float32))
    if preset in ("png", "rgb"):
        det.append(ScaleIntensityRanged("image", 0, 255, 0, 1, clip=True))
    elif preset == "mri":
        det.append(ScaleIntensityInForegroundd("image"))
    else:
        det.append(ScaleIntensityRanged("image", ct_window[0], ct_window[1], 0, 1, clip=True))
    det.append(Resized(keys, size, mode=["area" if spatial_dims == 2 else "trilinear", "nearest"][: len(keys)]))
    det.append(ForegroundMaskd("image", rim=rim))
    rand = [
        RandAffined(
            keys + ["image_foreground"],
            prob=0.5,
            rotate_range=0.08 if spatial_dims == 2 else (0.08, 0.08, 0.08),
            scale_range=0.05,
            mode=["bilinear"] + ["nearest"] * len(keys),
            padding_mode="zeros",
        ),
        RandScaleIntensityd("image", factors=0.1, prob=0.5),
    ]
    return Compose(det), Compose(rand)
