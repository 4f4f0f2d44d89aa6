# Copyright (c) monai-mtlmad contributors
# Licensed under the Apache License, Version 2.0
"""Anomaly metrics as Ignite handlers, to attach to MONAI evaluators (like ``monai.handlers.ROCAUC``)."""

from __future__ import annotations

from collections.abc import Callable

from monai.handlers import IgniteMetricHandler

from monai_mtlmad.metrics.cumulative import AnomalyMetric

__all__ = ["AnomalyMetricHandler"]


class AnomalyMetricHandler(IgniteMetricHandler):
    """Computes :class:`~monai_mtlmad.metrics.cumulative.AnomalyMetric` ``name`` over an epoch.

    Args:
        name: see :class:`~monai_mtlmad.metrics.cumulative.AnomalyMetric`.
        output_transform: extracts ``(y_pred, y)`` from ``engine.state.output``.
    """

    def __init__(self, name: str = "image_auroc", output_transform: Callable = lambda x: x) -> None:
        super().__init__(metric_fn=AnomalyMetric(name), output_transform=output_transform, save_details=False)
