# Copyright (c) monai-mtlmad contributors
# Licensed under the Apache License, Version 2.0
"""Dictionary-based versions of the proxy-task transforms.

Each replaces ``data[key]`` with its task view and writes the target under ``f"{key}_{postfix}"``. All keys of
one call share the same random draw (like MONAI's dictionary transforms).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, RandomizableTransform

from monai_mtlmad.transforms import functional as Fn
from monai_mtlmad.transforms.keywise import KeyWised
from monai_mtlmad.transforms.array import (
    PseudoLabel,
    RandCoarseNoise,
    RandInpaintMask,
    RandJigsaw,
    RandOrientation,
    RandPseudoAnomaly,
)

__all__ = [
    "RandInpaintMaskd",
    "RandInpaintMaskD",
    "RandInpaintMaskDict",
    "RandJigsawd",
    "RandJigsawD",
    "RandJigsawDict",
    "RandOrientationd",
    "RandOrientationD",
    "RandOrientationDict",
    "RandPseudoAnomalyd",
    "RandPseudoAnomalyD",
    "RandPseudoAnomalyDict",
    "RandCoarseNoised",
    "RandCoarseNoiseD",
    "RandCoarseNoiseDict",
    "PseudoLabeld",
    "PseudoLabelD",
    "PseudoLabelDict",
]


class _RandTaskd(RandomizableTransform, MapTransform):
    """Runs one array transform on every key with one shared draw, storing its targets beside the key."""

    def __init__(self, keys: KeysCollection, transform, postfixes: Sequence[str], allow_missing_keys: bool) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob=1.0)
        self.transform = transform
        self.postfixes = tuple(postfixes)

    def set_random_state(self, seed: int | None = None, state=None):
        super().set_random_state(seed, state)
        self.transform.set_random_state(seed, state)
        return self

    def randomize(self, data=None) -> None:
        self.transform.randomize()

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        self.randomize()
        for key in self.key_iterator(d):
            view, *targets = self._call_one(d, key)
            d[key] = view
            for postfix, target in zip(self.postfixes, targets):
                d[f"{key}_{postfix}"] = target
        return d

    def _call_one(self, d, key):
        return self.transform(d[key], randomize=False)


class RandInpaintMaskd(_RandTaskd):
    """Dictionary-based :class:`~monai_mtlmad.transforms.array.RandInpaintMask`; writes ``{key}_{mask_postfix}``."""

    def __init__(
        self,
        keys: KeysCollection,
        patch_size: int | Sequence[int] = 16,
        ratio_range: tuple[float, float] = (0.15, 0.5),
        lattice_prob: float = 0.5,
        stride: int = 2,
        fill_value: float = 0.0,
        mask_index: int | None = None,
        mask_postfix: str = "inpaint_mask",
        allow_missing_keys: bool = False,
    ) -> None:
        t = RandInpaintMask(patch_size, ratio_range, lattice_prob, stride, fill_value, mask_index)
        super().__init__(keys, t, [mask_postfix], allow_missing_keys)


class RandJigsawd(_RandTaskd):
    """Dictionary-based :class:`~monai_mtlmad.transforms.array.RandJigsaw`.

    Writes ``{key}_{target_postfix}`` (per-pixel original tile position) and ``{key}_{permutation_postfix}``
    (permutation id, int64 scalar tensor).
    """

    def __init__(
        self,
        keys: KeysCollection,
        grid: int | Sequence[int] = 3,
        num_permutations: int = 24,
        permutation_seed: int = 0,
        permutation_index: int | None = None,
        ignore_index: int = -1,
        target_postfix: str = "jigsaw_target",
        permutation_postfix: str = "jigsaw_perm",
        allow_missing_keys: bool = False,
    ) -> None:
        t = RandJigsaw(grid, num_permutations, permutation_seed, permutation_index, ignore_index)
        super().__init__(keys, t, [target_postfix, permutation_postfix], allow_missing_keys)

    def _call_one(self, d, key):
        view, target = self.transform(d[key], randomize=False)
        return view, target, torch.tensor(self.transform.last_permutation, dtype=torch.int64)


class RandOrientationd(_RandTaskd):
    """Dictionary-based :class:`~monai_mtlmad.transforms.array.RandOrientation`; writes ``{key}_{pose_postfix}``."""

    def __init__(
        self,
        keys: KeysCollection,
        num_poses: int | None = None,
        pose_index: int | None = None,
        pose_postfix: str = "pose",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, RandOrientation(num_poses, pose_index), [pose_postfix], allow_missing_keys)


class RandPseudoAnomalyd(_RandTaskd):
    """Dictionary-based :class:`~monai_mtlmad.transforms.array.RandPseudoAnomaly`.

    Writes ``{key}_{target_postfix}``. ``source_key`` names an item holding another image (e.g. a second subject
    loaded by the pipeline) to take foreign patches from; by default they come from the same image.
    """

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.8,
        kinds: Sequence[str] = Fn.PSEUDO_ANOMALY_KINDS,
        radius_range: tuple[float, float] = (0.04, 0.2),
        opacity_range: tuple[float, float] = (0.5, 1.0),
        contrast_range: tuple[float, float] = (0.1, 0.5),
        push_range: tuple[float, float] = (0.3, 0.7),
        foreground_threshold: float = 0.1,
        source_key: str | None = None,
        target_postfix: str = "anomaly_mask",
        allow_missing_keys: bool = False,
    ) -> None:
        t = RandPseudoAnomaly(
            prob, kinds, radius_range, opacity_range, contrast_range, push_range, foreground_threshold
        )
        super().__init__(keys, t, [target_postfix], allow_missing_keys)
        self.source_key = source_key

    def _call_one(self, d, key):
        source = d[self.source_key] if self.source_key is not None else None
        return self.transform(d[key], source=source, randomize=False)


class RandCoarseNoised(_RandTaskd):
    """Dictionary-based :class:`~monai_mtlmad.transforms.array.RandCoarseNoise`; writes the added noise to
    ``{key}_{noise_postfix}`` (the clean image is ``view - noise``)."""

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 1.0,
        cell: int | Sequence[int] | None = None,
        std_range: tuple[float, float] = (0.1, 0.3),
        foreground_threshold: float = 0.1,
        noise_postfix: str = "noise",
        allow_missing_keys: bool = False,
    ) -> None:
        t = RandCoarseNoise(prob, cell, std_range, foreground_threshold)
        super().__init__(keys, t, [noise_postfix], allow_missing_keys)


class PseudoLabeld(KeyWised):
    """Dictionary-based :class:`~monai_mtlmad.transforms.array.PseudoLabel`; writes ``{key}_{label_postfix}``."""

    def __init__(
        self,
        keys: KeysCollection,
        method: str = "multiotsu",
        classes: int = 3,
        label_postfix: str = "pseudo_label",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, PseudoLabel(method, classes), label_postfix, allow_missing_keys)


RandInpaintMaskD = RandInpaintMaskDict = RandInpaintMaskd
RandJigsawD = RandJigsawDict = RandJigsawd
RandOrientationD = RandOrientationDict = RandOrientationd
RandPseudoAnomalyD = RandPseudoAnomalyDict = RandPseudoAnomalyd
RandCoarseNoiseD = RandCoarseNoiseDict = RandCoarseNoised
PseudoLabelD = PseudoLabelDict = PseudoLabeld
