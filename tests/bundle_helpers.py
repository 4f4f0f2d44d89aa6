"""Running the MONAI Bundle as a user does: `python -m monai.bundle ...` in a subprocess."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "bundle" / "configs"


def bundle(*args, timeout=600, check=True):
    cmd = [sys.executable, "-W", "ignore", "-m", "monai.bundle", *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def configs(*names):
    return str([str(CONFIGS / f"{n}.json") for n in names])


def infer(data, out, model, *extra, check=True):
    """inference.json with only the model file and the inputs (everything else comes from the model file)."""
    return bundle("run", "--config_file", str(CONFIGS / "inference.json"), "--bundle_root", str(ROOT / "bundle"),
                  "--dataset_dir", str(data), "--output_dir", str(out), "--model_path", str(model), *extra, check=check)
