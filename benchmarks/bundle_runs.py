"""The bundle run as a user runs it, for the benchmark scripts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "bundle" / "configs"


def bundle(config: str, *args: str) -> None:
    """``python -m monai.bundle run --config_file bundle/configs/<config> ARGS``; raises with the end of its log."""
    cmd = [sys.executable, "-W", "ignore", "-m", "monai.bundle", "run", "--bundle_root", str(ROOT / "bundle"),
           "--config_file", str(CONFIGS / config), *args]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
