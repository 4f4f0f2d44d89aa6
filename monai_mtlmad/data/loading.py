# Copyright (c) monai-mtlmad contributors
# Licensed under the Apache License, Version 2.0
"""Datasets with the deterministic preprocessing cached, and loaders sized for the machine."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from monai.data import CacheDataset, DataLoader, Dataset, PersistentDataset
from monai.transforms import Compose

__all__ = ["make_dataset", "make_loader"]


def make_dataset(
    items: Sequence[dict],
    deterministic: Callable,
    random: Callable | None = None,
    cache: str | None = "memory",
    cache_dir: str | Path | None = None,
    num_workers: int | None = None,
) -> Dataset:
    """A dataset whose deterministic transforms run once per item and whose random ones run every epoch.

    Args:
        cache: ``"memory"`` (``CacheDataset``: small and medium datasets), ``"disk"`` (``PersistentDataset`` in
            ``cache_dir``: large datasets, reused across runs) or None (no cache).
    """
    # flattened so that the cache stops at the first random transform, not at the nested Compose
    transform = Compose([deterministic, random] if random is not None else [deterministic]).flatten()
    if cache == "memory":
        workers = num_workers if num_workers is not None else min(2, os.cpu_count() or 1)
        return CacheDataset(items, transform, num_workers=workers, progress=False)
    if cache == "disk":
        if cache_dir is None:
            raise ValueError("cache='disk' needs cache_dir.")
        return PersistentDataset(items, transform, cache_dir=cache_dir)
    if cache is not None:
        raise ValueError(f"cache must be 'memory', 'disk' or None, got {cache!r}.")
    return Dataset(items, transform)


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool = False, num_workers: int | None = None) -> DataLoader:
    """A DataLoader that keeps the machine's cores busy (2 workers on 2 cores) without oversubscribing them."""
    workers = num_workers if num_workers is not None else min(2, os.cpu_count() or 1)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=torch.cuda.is_available(),
    )
