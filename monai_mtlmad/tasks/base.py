# Copyright (c) monai-mtlmad contributors
# Licensed under the Apache License, Version 2.0
"""What a proxy task is, and the registry that makes a new task one module plus one config entry."""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["TaskViews", "ProxyTask", "TASK_REGISTRY", "register_task", "create_task", "create_tasks"]


@dataclass
class TaskViews:
    """One task's views of a batch.

    Attributes:
        inputs: ``(N, C, *spatial)`` network inputs.
        target: the task's target (dense ``(N, *, *spatial)`` or global ``(N,)``).
        info: anything the loss or the error needs besides the target (masks, permutation or pose ids).
    """

    inputs: torch.Tensor
    target: torch.Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)


class ProxyTask(ABC):
    """A proxy task: its views, target, loss, and per-image error and error map on deterministic views.

    Subclasses set ``name``, ``kind`` (``"dense"``: per-pixel output from the decoder; ``"global"``: one vector
    per image from the pooled bottleneck) and ``out_channels``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
    """

    name: str = ""
    kind: str = "dense"

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1) -> None:
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.progress = 0.0
        self.spec: dict[str, Any] = {"name": self.name}  # config entry that recreates the task (create_task fills it)

    @property
    @abstractmethod
    def out_channels(self) -> int:
        """Channels of the task's network output."""

    @property
    def head(self) -> tuple[str, int]:
        """``(kind, out_channels)``, what :class:`~monai_mtlmad.networks.MTLMoENet` needs to build the head."""
        return self.kind, self.out_channels

    def set_progress(self, progress: float) -> None:
        """Training progress in [0, 1], for curricula."""
        self.progress = float(min(max(progress, 0.0), 1.0))

    @abstractmethod
    def training_views(
        self, images: torch.Tensor, generator: torch.Generator | None = None, batch: Mapping | None = None
    ) -> TaskViews:
        """Random views and targets for ``images (B, C, *spatial)``; ``batch`` holds precomputed extras."""

    @abstractmethod
    def loss(self, output: torch.Tensor, views: TaskViews) -> torch.Tensor:
        """Scalar training loss of the network ``output`` for ``views``."""

    @abstractmethod
    def inference_views(self, images: torch.Tensor, batch: Mapping | None = None) -> Iterator[TaskViews]:
        """The deterministic views used to score ``images`` (fixed masks, permutations, poses)."""

    @abstractmethod
    def error(self, output: torch.Tensor, views: TaskViews) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-image error contribution ``(B,)`` and per-pixel map ``(B, 1, *spatial)`` in the image frame (or None).

        Contributions are summed over :meth:`inference_views`; each task scales them so that the sum is the mean.
        """

    @torch.no_grad()
    def score(
        self,
        predict: Callable[[torch.Tensor, "ProxyTask"], torch.Tensor],
        images: torch.Tensor,
        batch: Mapping | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """How badly the learner solves this task on unmodified ``images``.

        Args:
            predict: ``predict(inputs, task) -> output`` runs the network on this task's views.
            images: ``(B, C, *spatial)``.

        Returns:
            ``(errors (B,), maps (B, 1, *spatial) or None)``.
        """
        total, total_map = None, None
        for views in self.inference_views(images, batch):
            err, emap = self.error(predict(views.inputs, self), views)
            total = err if total is None else total + err
            if emap is not None:
                total_map = emap if total_map is None else total_map + emap
        return total, total_map


TASK_REGISTRY: dict[str, type[ProxyTask]] = {}


def register_task(name: str) -> Callable[[type[ProxyTask]], type[ProxyTask]]:
    """Class decorator that makes a task available by ``name`` to :func:`create_task` and configs."""

    def wrap(cls: type[ProxyTask]) -> type[ProxyTask]:
        if name in TASK_REGISTRY:
            raise ValueError(f"task {name!r} is already registered by {TASK_REGISTRY[name].__qualname__}.")
        cls.name = name
        TASK_REGISTRY[name] = cls
        return cls

    return wrap


def create_task(name: str, spatial_dims: int = 2, in_channels: int = 1, **kwargs: Any) -> ProxyTask:
    """Instantiate a registered task."""
    if name not in TASK_REGISTRY:
        raise KeyError(f"unknown task {name!r}; registered tasks: {sorted(TASK_REGISTRY)}.")
    cls = TASK_REGISTRY[name]
    task = cls(spatial_dims=spatial_dims, in_channels=in_channels, **kwargs)
    # every option written out, defaults included: a later default change must not alter a stored model's task
    bound = inspect.signature(cls.__init__).bind_partial(None, **kwargs)
    bound.apply_defaults()
    options = {k: v for k, v in list(bound.arguments.items())[1:] if k not in ("spatial_dims", "in_channels")}
    task.spec = {"name": name, **options}
    return task


def create_tasks(
    specs: Sequence[str | Mapping[str, Any]], spatial_dims: int = 2, in_channels: int = 1
) -> list[ProxyTask]:
    """Tasks from config entries: a name, or ``{"name": ..., **kwargs}``."""
    tasks = []
    for spec in specs:
        if isinstance(spec, str):
            spec = {"name": spec}
        kwargs = dict(spec)
        tasks.append(create_task(kwargs.pop("name"), spatial_dims, in_channels, **kwargs))
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ValueError(f"each task may appear once, got {names}.")
    return tasks
