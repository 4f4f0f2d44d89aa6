# Copyright (c) monai-mtlmad contributors
# Licensed under the Apache License, Version 2.0
"""Task-conditioned Mixture-of-Experts on spatial tokens, and the loss that makes experts specialise.

Every pixel/voxel of a feature map is a token. A task-conditioned gate routes each token to its top-k of E
pointwise feed-forward experts (as in sparse MoE transformers, here with 1x1 convolutions), so routing is per
location and per task. All experts run densely as two plain 1x1 convolutions, the gates applied to the hidden
units in between: ``sum_e g_e W_e^out a_e = W^out (g * a)`` with ``W^out = [W_1^out ... W_E^out]``, which avoids
grouped convolutions (slow to back-propagate on CPU) and any per-expert output tensor; the gates are sparse. The auxiliary loss maximises the mutual information between task and expert
(Mod-Squad, Chen et al., CVPR 2023): it balances the marginal expert usage over all tasks while making each
task's own routing sharp, whereas a per-gate load-balancing loss would make uniform routing optimal.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.layers.factories import Conv

__all__ = ["MoEFeedForward", "mutual_information_loss"]


def _entropy(p: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return -(p * torch.log(p.clamp_min(1e-9))).sum(dim)


def mutual_information_loss(
    probs: torch.Tensor, task_ids: torch.Tensor, num_tasks: int, specialisation_weight: float = 1.0
) -> torch.Tensor:
    """Balance-and-specialise loss ``(log E - H(E) + w * H(E | T)) / log E`` (``-MI(T; E)`` when ``w == 1``).

    Args:
        probs: gate probabilities ``(B, E, *spatial)`` (before top-k).
        task_ids: ``(B,)`` task of each sample.
        num_tasks: number of tasks of the network.
        specialisation_weight: weight of the conditional entropy (per-task routing sharpness).

    Returns:
        scalar in ``[0, 1 + w]``; 0 when tasks use disjoint single experts and all experts are used equally.
    """
    num_experts = probs.shape[1]
    per_sample = probs.flatten(2).mean(2)  # (B, E)
    sums = per_sample.new_zeros(num_tasks, num_experts).index_add(0, task_ids, per_sample)
    counts = torch.bincount(task_ids, minlength=num_tasks).to(per_sample.dtype)
    present = counts > 0
    p_e_given_t = sums[present] / counts[present, None]
    p_t = counts[present] / counts.sum()
    marginal = (p_t[:, None] * p_e_given_t).sum(0)
    conditional = (p_t * _entropy(p_e_given_t)).sum()
    return (math.log(num_experts) - _entropy(marginal) + specialisation_weight * conditional) / math.log(num_experts)


class MoEFeedForward(nn.Module):
    """Residual pointwise feed-forward block, either a task-routed MoE or one shared expert (the ablation).

    ``y = x + sum_e g_e(h, t) * Expert_e(h)``, ``h = norm(x) + task_embedding(t)``, where ``g`` keeps each token's
    top-k gate probabilities renormalised to sum to 1. With ``moe=False`` the block is a single feed-forward of
    ``top_k`` times the expert width (the same active compute per token) with the same task embedding.

    Args:
        spatial_dims: 2 or 3.
        channels: token channels.
        num_tasks: number of tasks (size of the task embedding table).
        num_experts: experts E.
        top_k: experts per token.
        hidden_ratio: expert hidden width relative to ``channels``.
        moe: False for the shared-expert ablation.
        gate_noise: std of Gaussian noise added to gate logits in training (exploration).

    Shapes:
        ``forward(x (B, C, *spatial), task_ids (B,)) -> (B, C, *spatial)``.
    """

    def __init__(
        self,
        spatial_dims: int,
        channels: int,
        num_tasks: int,
        num_experts: int = 4,
        top_k: int = 2,
        hidden_ratio: int = 2,
        moe: bool = True,
        gate_noise: float = 0.5,
    ) -> None:
        super().__init__()
        if moe and not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k must be in [1, num_experts={num_experts}], got {top_k}.")
        conv = Conv[Conv.CONV, spatial_dims]
        self.moe = moe
        self.num_tasks = num_tasks
        self.num_experts = num_experts if moe else 1
        self.top_k = top_k if moe else 1
        self.hidden = hidden_ratio * channels
        self.gate_noise = gate_noise
        hidden = self.hidden
        self.norm = nn.GroupNorm(1, channels)
        self.task_embedding = nn.Embedding(num_tasks, channels)
        nn.init.normal_(self.task_embedding.weight, std=0.5)
        if moe:
            self.gate = conv(channels, num_experts, kernel_size=1)
            self.gate_task = nn.Embedding(num_tasks, num_experts)
            nn.init.normal_(self.gate_task.weight, std=1.0)  # tasks start from different routings
            self.w_in = conv(channels, num_experts * hidden, kernel_size=1)
            self.w_out = conv(num_experts * hidden, channels, kernel_size=1)  # experts side by side on its input
        else:
            self.w_in = conv(channels, top_k * hidden, kernel_size=1)
            self.w_out = conv(top_k * hidden, channels, kernel_size=1)
        nn.init.zeros_(self.w_out.weight)  # start as identity: the block adds nothing until it learns
        nn.init.zeros_(self.w_out.bias)
        self.register_buffer("usage_counts", torch.zeros(num_tasks, self.num_experts), persistent=False)
        self.register_buffer("prob_sums", torch.zeros(num_tasks, self.num_experts), persistent=False)
        self.register_buffer("token_counts", torch.zeros(num_tasks), persistent=False)
        self.last_probs: torch.Tensor | None = None
        self.last_task_ids: torch.Tensor | None = None

    def _expand(self, v: torch.Tensor, ndim: int) -> torch.Tensor:
        return v.view(*v.shape, *([1] * (ndim - 2)))

    def forward(self, x: torch.Tensor, task_ids: torch.Tensor) -> torch.Tensor:
        h = self.norm(x) + self._expand(self.task_embedding(task_ids), x.ndim)
        if not self.moe:
            self.last_probs, self.last_task_ids = None, task_ids
            return x + self.w_out(F.gelu(self.w_in(h)))
        logits = self.gate(h) + self._expand(self.gate_task(task_ids), x.ndim)
        if self.training and self.gate_noise > 0:
            logits = logits + self.gate_noise * torch.randn_like(logits)
        probs = torch.softmax(logits, dim=1)  # (B, E, *sp)
        top_v, top_i = probs.topk(self.top_k, dim=1)
        gates = torch.zeros_like(probs).scatter(1, top_i, top_v / top_v.sum(1, keepdim=True))
        b = x.shape[0]
        hidden = F.gelu(self.w_in(h)).view(b, self.num_experts, self.hidden, *x.shape[2:])
        hidden = (hidden * gates.unsqueeze(2)).view(b, self.num_experts * self.hidden, *x.shape[2:])
        self.last_probs, self.last_task_ids = probs, task_ids
        self._record(gates, probs, task_ids)
        return x + self.w_out(hidden)

    @torch.no_grad()
    def _record(self, gates: torch.Tensor, probs: torch.Tensor, task_ids: torch.Tensor) -> None:
        tokens = gates[0, 0].numel()
        self.usage_counts.index_add_(0, task_ids, (gates > 0).flatten(2).sum(2).float())
        self.prob_sums.index_add_(0, task_ids, probs.flatten(2).sum(2).float())
        self.token_counts.index_add_(0, task_ids, torch.full_like(task_ids, tokens, dtype=torch.float))

    def aux_loss(self, specialisation_weight: float = 1.0) -> torch.Tensor | None:
        """Mutual-information loss of the last forward pass (None for the shared block)."""
        if self.last_probs is None:
            return None
        return mutual_information_loss(self.last_probs, self.last_task_ids, self.num_tasks, specialisation_weight)

    def usage(self) -> dict[str, torch.Tensor]:
        """Accumulated routing since the last :meth:`reset_usage`, per task ``(T, E)``.

        ``selection``: fraction of the task's tokens routed to each expert (rows sum to ``top_k``);
        ``probability``: mean gate probability (rows sum to 1).
        """
        n = self.token_counts.clamp_min(1)[:, None]
        return {"selection": self.usage_counts / n, "probability": self.prob_sums / n}

    def reset_usage(self) -> None:
        self.usage_counts.zero_()
        self.prob_sums.zero_()
        self.token_counts.zero_()
