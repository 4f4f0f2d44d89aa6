# Copyright (c) monai-mtlmad contributors
# Licensed under the Apache License, Version 2.0
"""All detection figures in one call, with the trivial baselines every report must show beside them."""

from __future__ import annotations

import math

import torch
from monai.config import NdarrayOrTensor

from monai_mtlmad.metrics.functional import aupro, average_precision, f1_max, roc_auc

__all__ = ["METRIC_KEYS", "compute_anomaly_metrics", "pixel_auroc_anomalous"]

METRIC_KEYS = (
    "image_auroc",
    "image_ap",
    "image_f1max",
    "pixel_auroc",
    "pixel_aupro",
    "pixel_dice",
    "pixel_auroc_anomalous",
    "baseline_image_auroc_foreground",
    "baseline_pixel_auroc_intensity",
    "baseline_pixel_auroc_intensity_anomalous",
)


def _clean(v: float) -> float | None:
    return None if v is None or math.isnan(v) else float(v)


def compute_anomaly_metrics(
    image_scores: NdarrayOrTensor,
    image_labels: NdarrayOrTensor,
    maps: NdarrayOrTensor | None = None,
    masks: NdarrayOrTensor | None = None,
    images: NdarrayOrTensor | None = None,
    foreground: NdarrayOrTensor | None = None,
    num_thresholds: int = 200,
    fpr_limit: float = 0.3,
) -> dict[str, float | None]:
    """Image- and pixel-level anomaly metrics as BMAD and anomalib compute them, plus honest-evaluation figures.

    Args:
        image_scores: ``(N,)`` higher is more anomalous.
        image_labels: ``(N,)`` 1 anomalous, 0 normal.
        maps: ``(N, *spatial)`` or ``(N, 1, *spatial)`` anomaly maps.
        masks: ground truth like ``maps`` (all zero for normal images).
        images: ``(N, C, *spatial)`` the images, for the raw-intensity pixel baseline.
        foreground: ``(N, *spatial)`` or ``(N, 1, *spatial)`` tissue masks, for the foreground-fraction image
            baseline and the in-anomalous-image pixel AUROC.
        num_thresholds, fpr_limit: AUPRO settings.

    Returns:
        ``{key: value}`` for every key of :data:`METRIC_KEYS`: ``image_auroc``, ``image_ap``, ``image_f1max``,
        ``pixel_auroc``, ``pixel_aupro``, ``pixel_dice`` (F1-max over pixels, i.e. Dice at the best threshold),
        ``pixel_auroc_anomalous`` (pixel AUROC inside the foreground of anomalous images only: immune to normal
        and anomalous images holding different amounts of tissue), ``baseline_image_auroc_foreground`` (the
        trivial score "fraction of foreground"), ``baseline_pixel_auroc_intensity`` (channel-mean intensity as the
        map) and ``baseline_pixel_auroc_intensity_anomalous`` (the same where ``pixel_auroc_anomalous`` is measured). None where the inputs do not allow a figure (no masks, a single class).
    """
    scores = torch.as_tensor(image_scores).reshape(-1)
    labels = torch.as_tensor(image_labels).reshape(-1)
    n = scores.numel()
    if labels.numel() != n:
        raise ValueError(f"{n} image scores but {labels.numel()} labels.")
    out: dict[str, float | None] = dict.fromkeys(METRIC_KEYS)
    out["image_auroc"] = _clean(roc_auc(scores, labels))
    out["image_ap"] = _clean(average_precision(scores, labels))
    out["image_f1max"] = _clean(f1_max(scores, labels)[0])

    def per_image(x, name):
        x = torch.as_tensor(x)
        if x.shape[0] != n:
            raise ValueError(f"{name} has {x.shape[0]} images, image_scores {n}.")
        return x.reshape(n, -1)

    fg = per_image(foreground, "foreground") > 0 if foreground is not None else None
    if fg is not None:
        out["baseline_image_auroc_foreground"] = _clean(roc_auc(fg.float().mean(1), labels))
    if maps is None or masks is None:
        return out
    m = per_image(maps, "maps")
    gt = per_image(masks, "masks") > 0
    if m.shape != gt.shape:
        raise ValueError(f"maps {tuple(m.shape)} and masks {tuple(gt.shape)} differ in shape.")
    out["pixel_auroc"] = _clean(roc_auc(m, gt))
    out["pixel_dice"] = _clean(f1_max(m, gt)[0])
    spatial = torch.as_tensor(masks).shape[1:]
    if len(spatial) > 2 and spatial[0] == 1:  # (N, 1, *spatial): drop the channel, components are spatial
        spatial = spatial[1:]
    out["pixel_aupro"] = _clean(aupro(m.reshape(n, *spatial), gt.reshape(n, *spatial), num_thresholds, fpr_limit))
    anomalous = labels > 0
    inside = fg[anomalous] if fg is not None else torch.ones_like(gt[anomalous])
    out["pixel_auroc_anomalous"] = pixel_auroc_anomalous(m, gt, labels, fg)
    if images is not None:
        intensity = torch.as_tensor(images).reshape(n, -1, *gt.shape[1:2]).float().mean(1)
        out["baseline_pixel_auroc_intensity"] = _clean(roc_auc(intensity, gt))
        out["baseline_pixel_auroc_intensity_anomalous"] = _clean(roc_auc(intensity[anomalous][inside], gt[anomalous][inside]))
    return out


def pixel_auroc_anomalous(maps: NdarrayOrTensor, masks: NdarrayOrTensor, labels: NdarrayOrTensor, foreground=None) -> float | None:
    """Pixel AUROC of ``maps (N, ...)`` inside the foreground of the anomalous images only (see
    :func:`compute_anomaly_metrics`); None without anomalous pixels."""
    n = torch.as_tensor(labels).numel()
    anomalous = torch.as_tensor(labels).reshape(-1) > 0
    m = torch.as_tensor(maps).reshape(n, -1)[anomalous]
    gt = torch.as_tensor(masks).reshape(n, -1)[anomalous] > 0
    inside = torch.as_tensor(foreground).reshape(n, -1)[anomalous] > 0 if foreground is not None else torch.ones_like(gt)
    return _clean(roc_auc(m[inside], gt[inside]))
