# Copyright (c) monai-mtlmad contributors
# Licensed under the Apache License, Version 2.0
"""Anomaly-detection metrics: exact, vectorised, usable without the learner."""

from monai_mtlmad.metrics.anomaly import METRIC_KEYS, compute_anomaly_metrics, pixel_auroc_anomalous
from monai_mtlmad.metrics.cumulative import AnomalyMetric
from monai_mtlmad.metrics.functional import aupro, average_precision, binary_clf_curve, connected_regions, f1_max, roc_auc

__all__ = [
    "AnomalyMetric",
    "METRIC_KEYS",
    "pixel_auroc_anomalous",
    "compute_anomaly_metrics",
    "aupro",
    "average_precision",
    "binary_clf_curve",
    "connected_regions",
    "f1_max",
    "roc_auc",
]
