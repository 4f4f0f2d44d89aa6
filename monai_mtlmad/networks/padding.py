# Copyright (c) monai-mtlmad contributors
# Licensed under the Apache License, Version 2.0
"""Run a network whose spatial sizes must divide by its total stride on any size."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = ["forward_padded"]


def forward_padded(
    net: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, divisor: int, mode: str = "replicate"
) -> torch.Tensor:
    """``net(x)`` for networks like MONAI's ``UNet`` that need spatial sizes divisible by ``divisor``: ``x`` is
    padded at the end of every spatial axis to the next multiple, and the output cropped back.

    Args:
        net: maps ``(B, C, *spatial)`` to ``(B, C', *spatial)``.
        x: ``(B, C, *spatial)``.
        divisor: the network's total down-sampling factor.
        mode: ``torch.nn.functional.pad`` mode (``"replicate"`` keeps the border free of an artificial edge).

    Returns:
        ``(B, C', *spatial)``, the spatial size of ``x``.
    """
    pad = [(-s) % divisor for s in x.shape[2:]]
    if not any(pad):
        return net(x)
    flat = [p for d in reversed(pad) for p in (0, d)]
    out = net(F.pad(x, flat, mode=mode))
    return out[(..., *[slice(0, s) for s in x.shape[2:]])]
