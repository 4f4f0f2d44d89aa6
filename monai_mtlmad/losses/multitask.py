# Copyright (c) monai-mtlmad contributors
# Licensed under the Apache License, Version 2.0
"""The joint multi-task loss: weighted task losses plus the MoE routing loss."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn

__all__ = ["MultiTaskLoss"]


class MultiTaskLoss(nn.Module):
    """``sum_t w_t L_t + moe_weight * L_moe``, with fixed weights or learned uncertainty weighting.

    With ``uncertainty=True`` each task gets a learned log-variance ``s_t`` and contributes
    ``exp(-s_t) * w_t * L_t + s_t`` (Kendall, Gal and Cipolla, CVPR 2018); add this module's parameters to the
    optimizer.

    Args:
        task_names: tasks in order.
        weights: ``{name: weight}``; missing tasks weigh 1.
        uncertainty: learn per-task uncertainty weights.
        moe_weight: weight of the MoE routing loss.

    Returns from ``forward(task_losses, moe_loss)``:
        ``(total, parts)``: parts are detached floats keyed by task name, ``"moe"`` and ``"total"``.
    """

    def __init__(
        self,
        task_names: Sequence[str],
        weights: Mapping[str, float] | None = None,
        uncertainty: bool = False,
        moe_weight: float = 0.05,
    ) -> None:
        super().__init__()
        weights = dict(weights or {})
        unknown = set(weights) - set(task_names)
        if unknown:
            raise ValueError(f"weights for unknown tasks {sorted(unknown)}; tasks are {list(task_names)}.")
        self.task_names = list(task_names)
        self.register_buffer("weights", torch.tensor([float(weights.get(n, 1.0)) for n in self.task_names]))
        self.log_vars = nn.Parameter(torch.zeros(len(self.task_names))) if uncertainty else None
        self.moe_weight = moe_weight

    def forward(
        self, task_losses: Mapping[str, torch.Tensor], moe_loss: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        missing = set(self.task_names) - set(task_losses)
        if missing:
            raise KeyError(f"no loss for tasks {sorted(missing)}.")
        losses = torch.stack([task_losses[n] for n in self.task_names])
        weighted = self.weights.to(losses) * losses
        if self.log_vars is not None:
            weighted = torch.exp(-self.log_vars) * weighted + self.log_vars
        total = weighted.sum()
        parts = {n: float(v) for n, v in zip(self.task_names, losses.detach())}
        if moe_loss is not None:
            total = total + self.moe_weight * moe_loss
            parts["moe"] = float(moe_loss.detach())
        parts["total"] = float(total.detach())
        return total, parts
