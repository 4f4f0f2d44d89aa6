# Copyright (c) monai-mtlmad contributors
# Licensed under the Apache License, Version 2.0
"""Ignite handlers: anomaly metrics, per-task TensorBoard statistics, model export and report writers."""

from monai_mtlmad.handlers.anomaly_metrics import AnomalyMetricHandler
from monai_mtlmad.handlers.checksums import ChecksumWriter
from monai_mtlmad.handlers.writers import (
    AnomalyMapTensorBoardHandler,
    AnomalyMapWriter,
    AnomalyReportWriter,
    ModelExportHandler,
    ProgressBarIfInteractive,
    TaskStatsTensorBoardHandler,
)

__all__ = [
    "AnomalyMapTensorBoardHandler",
    "AnomalyMapWriter",
    "AnomalyMetricHandler",
    "AnomalyReportWriter",
    "ChecksumWriter",
    "ModelExportHandler",
    "ProgressBarIfInteractive",
    "TaskStatsTensorBoardHandler",
]
