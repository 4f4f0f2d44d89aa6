# Copyright (c) monai-mtlmad contributors
# Licensed under the Apache License, Version 2.0
"""Networks: the multi-task MoE learner and its blocks (no files, no training loop)."""

from monai_mtlmad.networks.moe import MoEFeedForward, mutual_information_loss
from monai_mtlmad.networks.mtl_moe_net import MTLMoENet, TaskHead
from monai_mtlmad.networks.padding import forward_padded

__all__ = ["MTLMoENet", "MoEFeedForward", "TaskHead", "forward_padded", "mutual_information_loss"]
