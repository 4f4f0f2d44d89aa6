# Copyright (c) monai-mtlmad contributors
# Licensed under the Apache License, Version 2.0
"""One joint optimisation step over all proxy tasks (no Ignite: the Ignite trainer calls this)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from monai_mtlmad.losses.multitask import MultiTaskLoss
from monai_mtlmad.networks.mtl_moe_net import MTLMoENet
from monai_mtlmad.tasks.base import ProxyTask, TaskViews

__all__ = ["build_task_batch", "clip_and_step", "fit_learner", "multitask_loss", "multitask_train_step"]


def build_task_batch(
    tasks: Sequence[ProxyTask],
    images: torch.Tensor,
    generator: torch.Generator | None = None,
    batch: Mapping | None = None,
    images_per_task: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, list[TaskViews]]:
    """Every task's views of ``images (B, C, *spatial)``, concatenated into one mixed batch.

    Args:
        images_per_task: if set, each task sees a random subset of that many images (bounds the step cost).

    Returns:
        ``(inputs (sum_t B_t, C, *spatial), task_ids (sum_t B_t,), views per task)``; the batch holds the dense
        tasks' views first, then the global ones (each task's in its own order), ``views`` is in task order.
    """
    views = []
    for task in tasks:  # views in task order (the generator's draws do not depend on the batch layout below)
        imgs, extra = images, batch
        if images_per_task is not None and images_per_task < images.shape[0]:
            idx = torch.randperm(images.shape[0], generator=generator, device=generator.device if generator else None)
            idx = idx[:images_per_task].to(images.device)
            imgs = images[idx]
            extra = {k: v[idx] for k, v in batch.items() if torch.is_tensor(v) and len(v) == len(images)} if batch else None
        views.append(task.training_views(imgs, generator, extra))
    # dense tasks' views first: the network then runs its decoder on a leading slice of the batch instead of a
    # gathered copy (a full-resolution copy of every skip tensor, and its scatter in the backward pass)
    order = sorted(range(len(tasks)), key=lambda t: tasks[t].kind != "dense")
    inputs = torch.cat([views[t].inputs for t in order])
    task_ids = torch.cat(
        [torch.full((views[t].inputs.shape[0],), t, dtype=torch.long, device=images.device) for t in order]
    )
    return inputs, task_ids, views


def multitask_loss(
    net: torch.nn.Module,
    tasks: Sequence[ProxyTask],
    criterion: MultiTaskLoss,
    images: torch.Tensor,
    generator: torch.Generator | None = None,
    batch: Mapping | None = None,
    images_per_task: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """All task views of a batch through ``net`` in one mixed pass; the joint loss and its parts.

    ``net`` may be wrapped (e.g. ``DistributedDataParallel``): the MoE loss is read from the wrapped module.
    """
    with torch.no_grad():
        inputs, task_ids, views = build_task_batch(tasks, images, generator, batch, images_per_task)
    outputs = net(inputs, task_ids)
    core = getattr(net, "module", net)
    task_losses = {task.name: task.loss(outputs[task.name], v) for task, v in zip(tasks, views)}
    return criterion(task_losses, core.aux_loss() if core.moe else None)


def multitask_train_step(
    net: MTLMoENet,
    tasks: Sequence[ProxyTask],
    criterion: MultiTaskLoss,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    generator: torch.Generator | None = None,
    batch: Mapping | None = None,
    images_per_task: int | None = None,
    grad_clip: float | None = 5.0,
) -> dict[str, float]:
    """Build all task views for a batch, run them through ``net`` in one pass, and step once.

    Args:
        net: the learner, built with ``tasks=[t.head for t in tasks]`` in the same order.
        tasks: the proxy tasks.
        criterion: joint loss over the tasks' names.
        optimizer: optimises ``net`` (and ``criterion`` when it learns uncertainty weights).
        images: ``(B, C, *spatial)`` on the net's device, scaled to about [0, 1].
        generator: random source of the views (seed it for reproducible steps).
        batch: the whole batch dict, for precomputed extras such as pseudo-labels.
        images_per_task: optional per-task subset size.
        grad_clip: max gradient norm (None disables clipping).

    Returns:
        detached losses: per task, ``"moe"`` and ``"total"``.
    """
    net.train()
    total, parts = multitask_loss(net, tasks, criterion, images, generator, batch, images_per_task)
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    clip_and_step(optimizer, grad_clip)
    return parts


def clip_and_step(optimizer: torch.optim.Optimizer, grad_clip: float | None) -> None:
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], grad_clip)
    optimizer.step()


def fit_learner(
    net: MTLMoENet,
    tasks: Sequence[ProxyTask],
    images: torch.Tensor,
    steps: int,
    batch_size: int = 4,
    lr: float = 3e-3,
    seed: int = 0,
    log_every: int = 0,
    criterion: MultiTaskLoss | None = None,
) -> list[dict[str, float]]:
    """Train on an in-memory set of normal images with AdamW and a one-cycle schedule (scripts and tests; the
    Ignite trainer is the full-featured path). Task curricula follow the step count.

    Args:
        images: ``(N, C, *spatial)`` normal images on the net's device.
        steps: optimisation steps.
        log_every: print the losses every that many steps (0: silent).

    Returns:
        the losses of every step.
    """
    criterion = criterion or MultiTaskLoss([t.name for t in tasks])
    params = list(net.parameters()) + list(criterion.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    g = torch.Generator(device=images.device).manual_seed(seed)
    history = []
    for step in range(steps):
        for t in tasks:
            t.set_progress(step / steps)
        idx = torch.randint(0, images.shape[0], (batch_size,), generator=g, device=images.device)
        parts = multitask_train_step(net, tasks, criterion, opt, images[idx], g)
        sched.step()
        history.append(parts)
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(f"step {step}: " + " ".join(f"{k}={v:.3f}" for k, v in parts.items()), flush=True)
    return history
