# Copyright (c) monai-mtlmad contributors
# Licensed under the Apache License, Version 2.0
"""The one dictionary wrapper our deterministic transforms share."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping

from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform

__all__ = ["KeyWised"]


class KeyWised(MapTransform):
    """Apply ``transform`` to every key; store the result in place, or under ``f"{key}_{postfix}"`` if given."""

    def __init__(
        self, keys: KeysCollection, transform: Callable, postfix: str | None = None, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = transform
        self.postfix = postfix
        self.backend = getattr(transform, "backend", [])

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key if self.postfix is None else f"{key}_{self.postfix}"] = self.transform(d[key])
        return d
