# Copyright (c) monai-mtlmad contributors
# Licensed under the Apache License, Version 2.0
"""Ignite handlers."""

from monai_mtlmad.handlers.anomaly_metrics import AnomalyMetricHandler

__all__ = ["AnomalyMetricHandler"]
