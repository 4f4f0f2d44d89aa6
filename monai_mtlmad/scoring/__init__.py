# Copyright (c) monai-mtlmad contributors
# Licensed under the Apache License, Version 2.0
"""The detector: per-task errors, calibration on normals, fused maps, thresholds (no Ignite)."""

from monai_mtlmad.transforms.foreground import foreground_mask

from monai_mtlmad.scoring.overlay import render_overlay
from monai_mtlmad.scoring.scorer import AnomalyScorer, AnomalyScores, foreground_quantile

__all__ = ["AnomalyScorer", "AnomalyScores", "foreground_mask", "foreground_quantile", "render_overlay"]
