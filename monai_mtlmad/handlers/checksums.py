# Copyright (c) monai-mtlmad contributors
# Licensed under the Apache License, Version 2.0
"""A SHA-256 beside every checkpoint, so that a resume can tell the last good one from a damaged one."""

from __future__ import annotations

import logging
from pathlib import Path

from ignite.engine import Engine, Events

from monai_mtlmad.safe_io import write_checksum

__all__ = ["ChecksumWriter"]

logger = logging.getLogger(__name__)


class ChecksumWriter:
    """After each epoch, write ``<file>.sha256`` for every checkpoint in ``directory`` that has none or was
    rewritten since (MONAI's ``CheckpointSaver`` writes the files atomically; a kill between a checkpoint and its
    checksum leaves that checkpoint unverified, and a resume then takes the one before). Checksums of removed
    checkpoints are removed. Attach it after the ``CheckpointSaver``.

    Args:
        directory: the checkpoint folder.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        for side in self.directory.glob("*.pt.sha256"):
            if not side.with_suffix("").is_file():
                side.unlink()
        for path in self.directory.glob("*.pt"):
            side = path.with_name(path.name + ".sha256")
            # never re-sign a file whose checksum already exists unless the file was rewritten after it
            if not side.is_file() or path.stat().st_mtime_ns > side.stat().st_mtime_ns:
                write_checksum(path)
