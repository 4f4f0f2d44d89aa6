# Copyright (c) monai-mtlmad contributors
# Licensed under the Apache License, Version 2.0
"""The tissue of interest, computed from the image: where anomaly maps are allowed to speak."""

from __future__ import annotations

import numpy as np
import torch
from monai.config import NdarrayOrTensor

__all__ = ["foreground_mask"]


def foreground_mask(images: NdarrayOrTensor, rim: float = 0.0, min_fraction: float = 0.01) -> torch.Tensor:
    """Body / head mask per image: Otsu threshold of the channel mean, largest connected component, holes filled,
    then eroded by ``rim`` (a fraction of the image side) to strip a bright outer rim such as skull and scalp
    on brain MRI that is not skull-stripped.

    Args:
        images: ``(B, C, *spatial)``.
        rim: erosion depth as a fraction of the smallest spatial size (0 keeps the whole body).
        min_fraction: below this foreground fraction the mask falls back to the whole image (blank images).

    Returns:
        bool tensor ``(B, 1, *spatial)`` on the images' device.
    """
    from scipy import ndimage
    from skimage.filters import threshold_otsu
    from skimage.measure import label

    x = torch.as_tensor(images)
    arr = x.detach().float().mean(1).cpu().numpy()
    out = np.zeros(arr.shape, dtype=bool)
    depth = int(round(rim * min(arr.shape[1:])))
    for i, img in enumerate(arr):  # per image: connected components and hole filling are not batched ops
        if np.ptp(img) == 0:
            out[i] = True
            continue
        fg = img > threshold_otsu(img)
        lab = label(fg)
        if lab.max() > 0:
            fg = lab == np.argmax(np.bincount(lab.ravel())[1:]) + 1
        fg = ndimage.binary_fill_holes(fg)
        if depth > 0:
            fg = ndimage.binary_erosion(fg, iterations=depth)
        out[i] = fg if fg.mean() >= min_fraction else True
    return torch.from_numpy(out).unsqueeze(1).to(x.device if torch.is_tensor(x) else "cpu")
