# Copyright (c) monai-mtlmad contributors
# Licensed under the Apache License, Version 2.0
"""MTLMoENet: one Mixture-of-Experts network for all MTL-MAD proxy tasks.

Reference: "MTL-MAD: Multi-Task Learners are Effective Medical Anomaly Detectors" (arXiv 2605.05891, 2026);
routing loss after Mod-Squad (Chen et al., CVPR 2023). Design notes: ``DESIGN.md`` section 1.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
import torch.nn as nn
from monai.networks.blocks import Convolution, ResidualUnit
from monai.networks.layers.factories import Conv, Pool

from monai_mtlmad.networks.moe import MoEFeedForward

__all__ = ["MTLMoENet", "TaskHead"]


class MTLMoENet(nn.Module):
    """Shared residual encoder, task-routed MoE blocks, a shared U-Net decoder, and one head per task.

    - Encoder: residual units, unit ``i`` downsampling by ``strides[i]``; shared by all tasks, blind to the task.
    - Like MONAI's UNet, the first unit already downsamples, so no 3x3 convolution runs at full resolution: the
      last decoder level is upsampled by one transposed convolution (measured: a 2D step 5x cheaper per pixel
      than with full-resolution encoder and decoder units).
    - MoE: a :class:`~monai_mtlmad.networks.moe.MoEFeedForward` after the bottleneck and after every decoder
      level (``moe_levels``), routing each spatial token by task. Experts sit where tasks differ: the decoder.
    - Global tasks (``kind == "global"``) read the bottleneck average-pooled onto a coarse ``global_pool`` grid
      per dimension (which keeps the coarse layout that poses change) through a small MLP head; their samples
      skip the decoder. Dense tasks get a 1x1 convolution head on the last decoder features concatenated with
      the input (so intensity-regressing heads see absolute intensities despite instance normalisation).

    A mixed batch of views of different tasks runs in one pass; ``forward`` returns the outputs grouped by task,
    in the order the task's samples appear in the batch.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        tasks: ``{name: (kind, out_channels)}`` with kind ``"dense"`` or ``"global"``, in task-id order.
        channels: encoder channels per level.
        strides: downsampling of each encoder unit (one per entry of ``channels``).
        num_experts: experts per MoE block.
        top_k: experts per token.
        moe: False replaces every MoE block by one shared feed-forward block (the ablation).
        moe_levels: where MoE blocks go: any of ``"bottleneck"``, ``"decoder"``.
        hidden_ratio: expert width relative to the level's channels.
        num_res_units: residual sub-units per encoder/decoder unit.
        norm: MONAI norm for the convolutions.
        dropout: dropout in the convolution blocks.
        specialisation_weight: weight of per-task routing sharpness in the MoE loss (see ``mutual_information_loss``).
        global_pool: cells per dimension of the pooled bottleneck that global heads read.

    Shapes:
        ``forward(x (B, C_in, *spatial), task_ids (B,))`` -> ``{name: (B_t, C_t, *spatial) or (B_t, C_t)}``.
        Spatial sizes must be divisible by the product of ``strides``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        tasks: Mapping[str, tuple[str, int]],
        channels: Sequence[int] = (16, 32, 64, 128),
        strides: Sequence[int] = (2, 2, 2, 2),
        num_experts: int = 4,
        top_k: int = 2,
        moe: bool = True,
        moe_levels: Sequence[str] = ("bottleneck", "decoder"),
        hidden_ratio: int = 2,
        num_res_units: int = 1,
        norm: str | tuple = ("instance", {"affine": True}),
        dropout: float = 0.0,
        specialisation_weight: float = 1.0,
        global_pool: int = 2,
    ) -> None:
        super().__init__()
        if len(strides) != len(channels):
            raise ValueError(f"need one stride per level, got strides {strides} for channels {channels}.")
        for name, (kind, out) in tasks.items():
            if kind not in ("dense", "global") or out < 1:
                raise ValueError(f"task {name!r}: kind must be 'dense' or 'global' and out_channels >= 1.")
        if not tasks:
            raise ValueError("at least one task is needed.")
        unknown = set(moe_levels) - {"bottleneck", "decoder"}
        if unknown:
            raise ValueError(f"unknown moe_levels {unknown}.")
        # the constructor arguments, plain Python values: the model file stores them to rebuild the network
        self.config = {
            "spatial_dims": spatial_dims,
            "in_channels": in_channels,
            "tasks": {name: [kind, int(out)] for name, (kind, out) in tasks.items()},
            "channels": [int(c) for c in channels],
            "strides": [int(s) for s in strides],
            "num_experts": num_experts,
            "top_k": top_k,
            "moe": moe,
            "moe_levels": list(moe_levels),
            "hidden_ratio": hidden_ratio,
            "num_res_units": num_res_units,
            "norm": norm if isinstance(norm, str) else [norm[0], dict(norm[1])],
            "dropout": dropout,
            "specialisation_weight": specialisation_weight,
            "global_pool": global_pool,
        }
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.task_names = list(tasks)
        self.task_kinds = [tasks[n][0] for n in self.task_names]
        self.moe = moe
        self.moe_levels = tuple(moe_levels)
        self.specialisation_weight = specialisation_weight
        self.size_divisor = int(torch.prod(torch.tensor(list(strides) or [1])))
        self.register_buffer("dense_task", torch.tensor([k == "dense" for k in self.task_kinds]), persistent=False)
        num_tasks = len(tasks)

        def res(cin, cout, stride):
            return ResidualUnit(
                spatial_dims, cin, cout, strides=stride, subunits=num_res_units, norm=norm, dropout=dropout
            )

        def ffn(c):
            return MoEFeedForward(spatial_dims, c, num_tasks, num_experts, top_k, hidden_ratio, moe=moe)

        self.encoder = nn.ModuleList(
            [res(cin, cout, s) for cin, cout, s in zip([in_channels, *channels[:-1]], channels, strides)]
        )
        self.bottleneck_moe = ffn(channels[-1]) if "bottleneck" in moe_levels else None
        self.up = nn.ModuleList()
        self.decoder = nn.ModuleList()
        self.decoder_moe = nn.ModuleList()
        def up(cin, cout, stride):
            return Convolution(
                spatial_dims, cin, cout, strides=stride, kernel_size=3, norm=norm, dropout=dropout, is_transposed=True
            )

        for i in reversed(range(len(channels) - 1)):
            self.up.append(up(channels[i + 1], channels[i], strides[i + 1]))
            self.decoder.append(res(2 * channels[i], channels[i], 1))
            self.decoder_moe.append(ffn(channels[i]) if "decoder" in moe_levels else nn.Identity())
        self.final_up = up(channels[0], channels[0], strides[0])
        conv = Conv[Conv.CONV, spatial_dims]
        self.global_pool = Pool[Pool.ADAPTIVEAVG, spatial_dims](global_pool)
        c0, cb = channels[0], channels[-1] * global_pool**spatial_dims
        self.heads = nn.ModuleDict()
        for name, (kind, out) in tasks.items():
            if kind == "dense":
                self.heads[name] = conv(c0 + in_channels, out, kernel_size=1)
            else:
                self.heads[name] = nn.Sequential(nn.Linear(cb, cb), nn.GELU(), nn.Linear(cb, out))

    def moe_blocks(self) -> list[MoEFeedForward]:
        """All MoE (or shared feed-forward) blocks, bottleneck first."""
        return [m for m in self.modules() if isinstance(m, MoEFeedForward)]

    def forward(self, x: torch.Tensor, task_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.ndim != self.spatial_dims + 2:
            raise ValueError(f"expected input (B, C, *{self.spatial_dims} spatial), got shape {tuple(x.shape)}.")
        bad = [s for s in x.shape[2:] if s % self.size_divisor]
        if bad:
            raise ValueError(f"spatial size {tuple(x.shape[2:])} must be divisible by {self.size_divisor}.")
        task_ids = task_ids.to(x.device).long()
        skips = []
        h = x
        for block in self.encoder:
            h = block(h)
            skips.append(h)
        if self.bottleneck_moe is not None:
            h = self.bottleneck_moe(h, task_ids)
        out: dict[str, torch.Tensor] = {}
        pooled = self.global_pool(h).flatten(1)
        for t, name in enumerate(self.task_names):
            if self.task_kinds[t] == "global":
                sel = task_ids == t
                if sel.any():
                    out[name] = self.heads[name](pooled[sel])
        dense = self.dense_task[task_ids]
        if dense.any():
            idx = _rows(dense)
            d, ids = h[idx], task_ids[idx]
            for up, dec, moe, skip in zip(self.up, self.decoder, self.decoder_moe, reversed(skips[:-1])):
                d = dec(torch.cat([up(d), skip[idx]], 1))
                d = moe(d, ids) if isinstance(moe, MoEFeedForward) else d
            d = torch.cat([self.final_up(d), x[idx]], 1)
            for t, name in enumerate(self.task_names):
                sel = ids == t
                if self.task_kinds[t] == "dense" and sel.any():
                    out[name] = self.heads[name](d[_rows(sel)])
        return out

    def aux_loss(self) -> torch.Tensor:
        """Mean mutual-information routing loss of the last forward over the MoE blocks (0 without MoE)."""
        losses = [m.aux_loss(self.specialisation_weight) for m in self.moe_blocks()]
        losses = [v for v in losses if v is not None]
        if not losses:
            return torch.zeros((), device=self.dense_task.device)
        return torch.stack(losses).mean()

    def expert_usage(self, reset: bool = False) -> dict[str, dict[str, torch.Tensor]]:
        """Routing statistics per MoE block: ``{block: {"selection"|"probability": (T, E)}}``, rows in task order."""
        names = {id(m): n for n, m in self.named_modules()}
        stats = {names[id(m)]: m.usage() for m in self.moe_blocks() if m.moe}
        if reset:
            self.reset_usage()
        return stats

    def reset_usage(self) -> None:
        for m in self.moe_blocks():
            m.reset_usage()

    @contextmanager
    def separate_usage(self) -> Iterator[None]:
        """Routing recorded inside the block is counted apart: the statistics accumulated before it (e.g. a
        training epoch's, which a validation run interrupts) are restored when it ends."""
        blocks = self.moe_blocks()
        saved = [(m.usage_counts.clone(), m.prob_sums.clone(), m.token_counts.clone()) for m in blocks]
        self.reset_usage()
        try:
            yield
        finally:
            for m, (usage, probs, tokens) in zip(blocks, saved):
                m.usage_counts.copy_(usage)
                m.prob_sums.copy_(probs)
                m.token_counts.copy_(tokens)


def _rows(mask: torch.Tensor) -> slice | torch.Tensor:
    """The batch rows where ``mask (B,)`` holds: a slice when they are one contiguous run (a view, where indexing
    would copy a full-resolution tensor and scatter its gradient back), else their indices."""
    idx = mask.nonzero(as_tuple=True)[0]
    first, last = int(idx[0]), int(idx[-1])
    return slice(first, last + 1) if last - first + 1 == idx.numel() else idx


class TaskHead(nn.Module):
    """One task of an :class:`MTLMoENet` as a single-input network: ``forward(x) -> net(x, task)[task]``.

    For tools that call a network with one tensor (``monai.bundle verify_net_in_out``, TorchScript export,
    plain inferers).
    """

    def __init__(self, network: MTLMoENet, task: str) -> None:
        super().__init__()
        if task not in network.task_names:
            raise ValueError(f"unknown task {task!r}; the network has {network.task_names}.")
        self.network, self.task, self.index = network, task, network.task_names.index(task)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids = torch.full((x.shape[0],), self.index, dtype=torch.long, device=x.device)
        return self.network(x, ids)[self.task]
