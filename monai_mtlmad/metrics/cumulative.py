# Copyright (c) monai-mtlmad contributors
# Licensed under the Apache License, Version 2.0
"""The anomaly metrics as MONAI cumulative metrics: feed batches, aggregate once at the end."""

from __future__ import annotations

import torch
from monai.metrics import CumulativeIterationMetric

from monai_mtlmad.metrics.functional import aupro, average_precision, f1_max, roc_auc

__all__ = ["AnomalyMetric"]

_FUNCTIONS = {
    "auroc": roc_auc,
    "ap": average_precision,
    "f1max": lambda s, y: f1_max(s, y)[0],
    "dice": lambda s, y: f1_max(s, y)[0],
    "aupro": aupro,
}


class AnomalyMetric(CumulativeIterationMetric):
    """Accumulates ``(y_pred, y)`` batches and computes one anomaly metric over all of them.

    Args:
        name: ``image_auroc``, ``image_ap``, ``image_f1max`` (``y_pred`` image scores ``(B,)`` or ``(B, 1)``, ``y``
            labels) or ``pixel_auroc``, ``pixel_aupro``, ``pixel_dice`` (``y_pred`` maps ``(B, 1, *spatial)``,
            ``y`` masks of the same shape).

    ``aggregate()`` returns a float (``nan`` where undefined, e.g. a single class so far).
    """

    def __init__(self, name: str = "image_auroc") -> None:
        super().__init__()
        level, _, kind = name.partition("_")
        if level not in ("image", "pixel") or kind not in _FUNCTIONS or (level, kind) in {
            ("image", "aupro"), ("image", "dice"), ("pixel", "ap"), ("pixel", "f1max")
        }:
            raise ValueError(f"unknown anomaly metric {name!r}.")
        self.name, self.level, self.fn = name, level, _FUNCTIONS[kind]

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor):  # type: ignore[override]
        if self.level == "image":
            return y_pred.reshape(y_pred.shape[0], 1), y.reshape(y.shape[0], 1)
        if y_pred.shape != y.shape:
            raise ValueError(f"{self.name}: maps {tuple(y_pred.shape)} and masks {tuple(y.shape)} differ in shape.")
        return y_pred, y

    def aggregate(self) -> float:  # type: ignore[override]
        y_pred, y = self.get_buffer()
        if self.name == "pixel_aupro":
            return self.fn(y_pred[:, 0], y[:, 0])
        return self.fn(y_pred, y)
