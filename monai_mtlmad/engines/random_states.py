# Copyright (c) monai-mtlmad contributors
# Licensed under the Apache License, Version 2.0
"""Every random source of a training run as one checkpointable object, so that a resumed run continues exactly
where the killed one stopped: the same batches, augmentations, task views and gate noise."""

from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np
import torch
from monai.transforms import Randomizable

__all__ = ["RandomStates"]


def _numpy_states(obj, seen: set[int] | None = None) -> Iterator[np.random.RandomState]:
    """The ``RandomState`` of every MONAI ``Randomizable`` reachable from ``obj`` (a dataset, a ``Compose``, a
    transform), in a fixed order: the objects MONAI's ``set_rnd`` seeds."""
    seen = set() if seen is None else seen
    if id(obj) in seen or isinstance(obj, (str, bytes, int, float, torch.Tensor, np.ndarray)):
        return
    seen.add(id(obj))
    if isinstance(obj, Randomizable):
        yield obj.R
    if isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _numpy_states(item, seen)
    elif hasattr(obj, "__dict__") and type(obj).__module__.startswith("monai"):  # MONAI's and ours
        for value in vars(obj).values():
            if isinstance(value, (list, tuple)) or hasattr(value, "__dict__"):
                yield from _numpy_states(value, seen)


def _pack(state: tuple) -> dict:
    """A numpy ``RandomState`` state as tensors and plain values (``torch.load(weights_only=True)`` refuses arrays)."""
    name, keys, pos, has_gauss, cached = state
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached": float(cached)}


def _unpack(state: dict) -> tuple:
    # .cpu(): a checkpoint resumed on a GPU is loaded there (CheckpointLoader's map_location), numpy states live here
    keys = state["keys"].cpu().numpy().astype(np.uint32)
    return state["name"], keys, state["pos"], state["has_gauss"], state["cached"]


class RandomStates:
    """The random states of a training run, for a ``CheckpointSaver``'s ``save_dict`` and a ``CheckpointLoader``'s
    ``load_dict``: torch (CPU and CUDA), numpy, Python's ``random``, the trainer's task-view generator and every
    random transform of the training data (which, with ``num_workers=0``, carry their state across epochs).

    Args:
        trainer: the :class:`~monai_mtlmad.engines.MultiTaskTrainer` (its ``generator``).
        data: the training dataset or its transforms.
    """

    def __init__(self, trainer=None, data=None) -> None:
        self.trainer, self.data = trainer, data

    def state_dict(self) -> dict:
        version, internal, gauss = random.getstate()
        state = {
            "torch": torch.get_rng_state(),
            "numpy": _pack(np.random.get_state()),
            "python": [version, list(internal), gauss],
            "transforms": [_pack(r.get_state()) for r in _numpy_states(self.data)],
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        if self.trainer is not None:
            state["trainer"] = self.trainer.generator.get_state()
        return state

    def load_state_dict(self, state: dict) -> None:
        torch.set_rng_state(state["torch"].cpu())
        np.random.set_state(_unpack(state["numpy"]))
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
        if self.trainer is not None and "trainer" in state:
            self.trainer.generator.set_state(state["trainer"].cpu())
        transforms = list(_numpy_states(self.data))
        if len(transforms) != len(state["transforms"]):
            raise ValueError(f"the checkpoint holds {len(state['transforms'])} transform random states, the "
                             f"training data has {len(transforms)}: not the same training configuration.")
        for r, s in zip(transforms, state["transforms"]):
            r.set_state(_unpack(s))
