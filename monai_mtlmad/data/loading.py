# Copyright (c) monai-mtlmad contributors
# Licensed under the Apache License, Version 2.0
"""Datasets with the deterministic preprocessing cached, and loaders sized for the machine; datasets that list
every unusable input at once (training) or skip and record it (inference)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from monai.data import CacheDataset, DataLoader, Dataset, PersistentDataset, list_data_collate
from monai.transforms import Compose

from monai_mtlmad.data.checks import describe_failure

__all__ = [
    "make_dataset", "make_loader", "CheckedCacheDataset", "SkippingDataset", "raise_on_failures", "skipping_collate",
]

logger = logging.getLogger(__name__)


def make_dataset(
    items: Sequence[dict],
    deterministic: Callable,
    random: Callable | None = None,
    cache: str | None = "memory",
    cache_dir: str | Path | None = None,
    num_workers: int | None = None,
    what: str = "input",
) -> Dataset:
    """A dataset whose deterministic transforms run once per item and whose random ones run every epoch.

    Args:
        cache: ``"memory"`` (:class:`CheckedCacheDataset`: small and medium datasets), ``"disk"`` (``PersistentDataset`` in
            ``cache_dir``: large datasets, reused across runs) or None (no cache).
        what: how the memory cache's error names the set when files fail (e.g. ``"calibration"``).
    """
    # flattened so that the cache stops at the first random transform, not at the nested Compose
    transform = Compose([deterministic, random] if random is not None else [deterministic]).flatten()
    if cache == "memory":
        workers = num_workers if num_workers is not None else min(2, os.cpu_count() or 1)
        return CheckedCacheDataset(items, transform, what=what, num_workers=workers, progress=False)
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


class CheckedCacheDataset(CacheDataset):
    """A ``CacheDataset`` that, instead of stopping at the first input that fails its deterministic transforms,
    preprocesses all of them and then raises one error listing every failure (count, file, reason): a long run
    fails fast, with the whole list to fix.

    Args:
        what: how the error names the set (e.g. ``"training"``).
        raise_on_failure: raise at construction; False leaves it to :func:`raise_on_failures`, which lists the
            failures of several datasets at once (the bundle checks training, calibration and validation together).
        Other arguments: as ``CacheDataset``.

    Raises:
        ValueError: ``"3 of 80 training images cannot be used:"`` followed by one line per file.
    """

    def __init__(self, data: Sequence, transform=None, what: str = "input", raise_on_failure: bool = True, **kwargs):
        self.what, self.raise_on_failure = what, raise_on_failure
        self.failures: list[str] = []
        super().__init__(data, transform, **kwargs)

    def _load_cache_item(self, idx: int):
        try:
            return super()._load_cache_item(idx)
        except Exception as e:  # every failure is collected; the first must not hide the others
            self.failures.append(describe_failure(e, self.data[idx].get("image", idx)))
            return None

    def set_data(self, data: Sequence) -> None:
        self.failures = []
        super().set_data(data)
        if self.raise_on_failure:
            raise_on_failures(self)

    def failure_report(self) -> str | None:
        """``"3 of 80 training images cannot be used:"`` and one line per file, or None."""
        if not self.failures:
            return None
        listing = "\n".join(f"  {f}" for f in sorted(self.failures))
        return f"{len(self.failures)} of {len(self.data)} {self.what} images cannot be used:\n{listing}"


def raise_on_failures(*datasets: CheckedCacheDataset) -> None:
    """Raise one ``ValueError`` listing the failed inputs of all ``datasets`` (nothing when all loaded)."""
    reports = [r for r in (d.failure_report() for d in datasets) if r]
    if reports:
        raise ValueError("\n".join(reports))


class SkippingDataset(Dataset):
    """A ``Dataset`` whose inputs that fail their transforms come back as ``{"image": source, "skipped": reason}``
    instead of stopping the run; :func:`skipping_collate` keeps them out of the batch and lists them."""

    def _transform(self, index: int):
        try:
            return super()._transform(index)
        except Exception as e:  # recorded and reported by the writers; the other inputs go on
            source = self.data[index].get("image", index)
            reason = describe_failure(e, source)
            logger.warning(f"skipped {reason}")
            return {"image": str(source), "skipped": reason}


def skipping_collate(items: Sequence[dict]) -> dict:
    """``list_data_collate`` of the inputs that loaded, plus ``"skipped"``: ``[(source, reason), ...]`` of the
    others (a batch may hold only skipped inputs: then it has no ``"image"``)."""
    good = [d for d in items if "skipped" not in d]
    batch = list_data_collate(good) if good else {}
    batch["skipped"] = [(d["image"], d["skipped"]) for d in items if "skipped" in d]
    return batch
