# Copyright (c) monai-mtlmad contributors
# Licensed under the Apache License, Version 2.0
"""Losses."""

from monai_mtlmad.losses.multitask import MultiTaskLoss

__all__ = ["MultiTaskLoss"]
