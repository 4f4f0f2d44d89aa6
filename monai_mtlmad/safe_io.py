# Copyright (c) monai-mtlmad contributors
# Licensed under the Apache License, Version 2.0
"""Files that survive kills and betray damage: atomic writes, SHA-256 checksums, ``weights_only`` loading; and
earlier results moved aside rather than overwritten (:func:`keep_previous`).

- Model files are written by :func:`save_checked`: the torch payload and its SHA-256 in one file, written to a
  temporary file, synced and moved into place, so an interrupted save leaves the previous file intact and a
  damaged or edited file is refused by :func:`load_checked` (a truncated file fails to open; a flipped bit inside
  a tensor would otherwise load silently).
- Training checkpoints stay plain torch files that MONAI's ``CheckpointLoader`` reads; :func:`write_checksum` puts
  a ``<file>.sha256`` beside each, and :func:`verify_checksum` lets a resume pick the last good one.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections.abc import Sequence
from datetime import datetime
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "CorruptFileError", "save_checked", "load_checked", "write_checksum", "verify_checksum", "sha256", "keep_previous",
]

CHECKED_FORMAT = "monai-mtlmad-checked/1"


class CorruptFileError(ValueError):
    """A file that is truncated, damaged, edited after it was written, or not what it claims to be."""


def sha256(data: bytes | Path) -> str:
    """Hex SHA-256 of bytes or of a file's content."""
    if isinstance(data, (bytes, bytearray)):
        return hashlib.sha256(data).hexdigest()
    digest = hashlib.sha256()
    with open(data, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _atomic_write(path: Path, write) -> None:
    """``write(file)`` into a temporary file beside ``path``, synced, then moved over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checked(obj: Any, path: str | Path) -> None:
    """``torch.save(obj)`` with its SHA-256, written atomically to ``path``."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    payload = buffer.getvalue()
    # the payload travels as a uint8 tensor: stored verbatim (pickled bytes would be re-encoded, 1.5x larger)
    outer = {"format": CHECKED_FORMAT, "sha256": sha256(payload), "payload": torch.frombuffer(bytearray(payload), dtype=torch.uint8)}
    _atomic_write(Path(path), lambda f: torch.save(outer, f))


def load_checked(path: str | Path, map_location=None) -> Any:
    """What :func:`save_checked` wrote, after checking its SHA-256; loaded with ``weights_only=True`` (tensors and
    plain Python values only: no code runs). A plain torch file without a checksum (older versions) loads as is.

    Raises:
        FileNotFoundError: no such file.
        CorruptFileError: naming the file: unreadable or truncated, or its content does not match its checksum.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file.")
    try:
        outer = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CorruptFileError(f"{path}: unreadable or truncated torch file ({type(e).__name__}: {str(e).splitlines()[0]}).") from e
    if not (isinstance(outer, dict) and outer.get("format") == CHECKED_FORMAT):
        return outer if map_location is None else torch.load(path, map_location=map_location, weights_only=True)
    payload = outer["payload"].numpy().tobytes()
    if sha256(payload) != outer["sha256"]:
        raise CorruptFileError(f"{path}: its content does not match its checksum (damaged or edited after it was written).")
    return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def write_checksum(path: str | Path) -> None:
    """Write ``<path>.sha256`` (atomically) for a finished file."""
    path = Path(path)
    digest = sha256(path)
    _atomic_write(_sidecar(path), lambda f: f.write(f"{digest}  {path.name}\n".encode()))


def verify_checksum(path: str | Path) -> bool | None:
    """True when ``<path>.sha256`` matches the file, False when it does not, None when there is no checksum."""
    path, side = Path(path), _sidecar(Path(path))
    if not side.is_file():
        return None
    words = side.read_text().split()
    return bool(words) and path.is_file() and sha256(path) == words[0]


def keep_previous(output_dir: str | Path, names: Sequence[str]) -> Path | None:
    """Move the ``names`` (files or folders) that exist in ``output_dir`` into ``output_dir/previous/<time>/``, so
    that a new run writes beside them instead of over them. Returns that folder, or None when nothing was there."""
    output_dir = Path(output_dir)
    present = [output_dir / n for n in names if (output_dir / n).exists()]
    if not present:
        return None
    stamp = datetime.fromtimestamp(max(p.stat().st_mtime for p in present)).strftime("%Y%m%d-%H%M%S")
    target = output_dir / "previous" / stamp
    suffix = 1
    while target.exists():
        target, suffix = output_dir / "previous" / f"{stamp}-{suffix}", suffix + 1
    target.mkdir(parents=True)
    for p in present:
        p.rename(target / p.name)
    logging.getLogger(__name__).info(f"earlier results kept in {target}: {', '.join(p.name for p in present)}")
    return target
