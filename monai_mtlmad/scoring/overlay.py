# Copyright (c) monai-mtlmad contributors
# Licensed under the Apache License, Version 2.0
"""Pictures of anomaly maps: one panel figure per case (the image, the fused map over it, each task's map, the
ground truth contour), and pixel-exact renderings that lie on the input picture (8-bit map, colour overlay)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

__all__ = ["render_overlay", "map_to_uint8", "blend_map"]


def _np(x) -> np.ndarray:
    return x.detach().float().cpu().numpy() if torch.is_tensor(x) else np.asarray(x, dtype=np.float32)


def render_overlay(
    path: str | Path,
    image,
    fused_map,
    task_maps: Mapping[str, object] | None = None,
    mask=None,
    title: str = "",
    slice_index: int | None = None,
) -> Path:
    """Write a PNG: image | fused map overlay (+ ground-truth contour) | one panel per task map.

    Arrays are in MONAI's order, x first (as its readers load pictures and volumes); they are drawn with x to the
    right and y downward, so a picture looks as it does in an image viewer.

    Args:
        path: output PNG.
        image: ``(C, *spatial)``; 3D volumes are shown at ``slice_index`` along the last axis (default: the slice
            where the fused map peaks).
        fused_map: ``(1, *spatial)``.
        task_maps: ``{task: (1, *spatial)}``.
        mask: optional ground truth ``(1, *spatial)``.
        title: figure title (e.g. the file name and score).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img, fmap = _np(image), _np(fused_map)[0]
    if img.ndim == 4:
        z = int(np.argmax(fmap.reshape(-1, fmap.shape[-1]).max(0))) if slice_index is None else slice_index
        pick = lambda a: None if a is None else _np(a)[..., z]  # noqa: E731
        img, fmap = img[..., z], fmap[..., z]
        task_maps = {k: pick(v) for k, v in (task_maps or {}).items()}
        mask = pick(mask)
    # (x, y) arrays -> (rows = y, columns = x) pictures
    gray = img.mean(0).T if img.shape[0] != 3 else np.clip(img.transpose(2, 1, 0), 0, 1)
    fmap = fmap.T
    panels = 2 + len(task_maps or {})
    fig, axes = plt.subplots(1, panels, figsize=(3 * panels, 3.3))
    axes[0].imshow(gray, cmap="gray")
    axes[0].set_title("image")
    axes[1].imshow(gray, cmap="gray")
    axes[1].imshow(fmap, cmap="jet", alpha=0.45)
    axes[1].set_title("fused map")
    if mask is not None:
        m = _np(mask)[0].T
        for ax in axes[:2]:
            ax.contour(m > 0.5, levels=[0.5], colors="white", linewidths=1)
    for ax, (name, tmap) in zip(axes[2:], (task_maps or {}).items()):
        ax.imshow(_np(tmap)[0].T, cmap="magma")
        ax.set_title(name)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def map_to_uint8(amap: np.ndarray, threshold: float) -> np.ndarray:
    """An anomaly map as 8-bit grey levels: 0 at or below 0 (the normal median), 128 at ``threshold`` (e.g. the
    scorer's pixel threshold), 255 at twice it and above."""
    scale = 2 * threshold if threshold and threshold > 0 else float(np.max(amap)) or 1.0
    return np.round(255 * np.clip(np.asarray(amap, np.float64) / scale, 0, 1)).astype(np.uint8)


def blend_map(picture: np.ndarray, amap: np.ndarray, threshold: float) -> np.ndarray:
    """``(H, W, 3)`` uint8: the ``(H, W[, C])`` picture in grey with the ``(H, W)`` map over it in the jet colours,
    opaque where the map reaches ``threshold``, fading out towards 0 (see :func:`map_to_uint8`)."""
    from matplotlib import colormaps

    grey = np.asarray(picture, np.float64)
    if grey.ndim == 3:
        grey = grey[..., :3].mean(-1)
    span = float(grey.max() - grey.min())
    grey = (grey - grey.min()) / (span if span > 0 else 1.0)
    level = map_to_uint8(amap, threshold) / 255.0
    colour = colormaps["jet"](level)[..., :3]
    alpha = 0.6 * np.clip(2 * level, 0, 1)[..., None]  # full strength from the threshold (level 0.5) up
    out = (1 - alpha) * grey[..., None] + alpha * colour
    return np.round(255 * out).astype(np.uint8)
