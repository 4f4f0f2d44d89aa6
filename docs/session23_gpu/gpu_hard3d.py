#!/usr/bin/env python
"""Issue 13's 3D point on a GPU, in one device call: the harder 3D heads generated at 96^3 (heads 52-102 mm, spacing
1.2 x 1 x 1.5 mm), trained through the bundle at ``--size 96 --spacing 1.0`` (heads 52-102 voxels across, twice the
1.0 mm / 48^3 run of sessions 21-22), three seeds side by side on the one GPU, each scored on the 192 new volumes of
``head_test192`` through ``evaluate.json`` (``scripts/compare_on_hard_sets.py``, as on the CPU).

The training steps are sized from a probe (``probe_step.py``, three processes at once, as the seeds then run) so
that training, export and evaluation end before ``--deadline`` seconds; whatever exists then is packed into $OUT.

    python docs/session23_gpu/gpu_hard3d.py --deadline 530     # on the device, data under runs/g96/data

The data, made here and carried (about 45 MB): ``make_demo_dataset("runs/g96/data/head", 3, n_train=40, n_valid=16,
n_test=48, size=96, seed=100, hard=True)``, ``make_demo_dataset("runs/g96/data/head_test192", 3, n_train=8,
n_valid=8, n_test=192, size=96, seed=200, hard=True)``, and for the smoke run ``runs/g96/data/head_test8/test``: the
first 4 normal and 4 lesioned volumes of ``head_test192/test`` (with their masks). The splits nobody reads
(``head/test``, ``head_test192/train|valid``) may be deleted to carry less.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

T0 = time.time()
HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
STEPS_PER_EPOCH = 8  # 40 training volumes, 8 held out for calibration, batch 4, drop_last


def log(msg: str) -> None:
    print(f"[{time.time() - T0:6.1f} s] {msg}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--deadline", type=float, default=530, help="seconds from start by which everything is packed")
    p.add_argument("--seeds", nargs="+", type=int, default=[3, 4, 5])
    p.add_argument("--eval_reserve", type=float, default=200, help="seconds kept for scoring the 192 test volumes")
    p.add_argument("--export_reserve", type=float, default=100, help="seconds for caching, validation and export")
    p.add_argument("--min_epochs", type=int, default=40)
    p.add_argument("--max_epochs", type=int, default=400)
    p.add_argument("--epochs", type=int, default=0, help="fixed epochs (0: sized from the probe)")
    a = p.parse_args()
    out = Path(os.environ.get("OUT", "out"))
    out.mkdir(parents=True, exist_ok=True)
    data = ROOT / "runs" / "g96" / "data"
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // len(a.seeds))), "PYTHONUNBUFFERED": "1"}
    summary: dict = {"seeds": a.seeds}
    try:
        # a smoke run of the whole path at 32^3 (2 epochs, 8 test volumes) beside the probe: a GPU-only fault shows in
        # about a minute, leaving device time to mend it and run again
        smoke_root = ROOT / "runs" / "g96_smoke"
        smoke_root.mkdir(parents=True, exist_ok=True)
        if not (smoke_root / "data").exists():
            (smoke_root / "data").symlink_to(data)
        smoke = subprocess.Popen(
            [sys.executable, "-W", "ignore", str(ROOT / "scripts" / "compare_on_hard_sets.py"), "--root", str(smoke_root),
             "--datasets", "head", "--seeds", "0", "--variants", "5 tasks", "--spatial_dims", "3", "--size", "32",
             "--spacing", "3.0", "--n_train", "40", "--n_valid", "16", "--n_test", "48", "--epochs", "2",
             "--map_weights", "selected", "--fast_steps", "0", "--test_images", "8"],
            stdout=open(smoke_root / "driver.log", "w"), stderr=subprocess.STDOUT, env=env)
        if a.epochs:
            epochs = a.epochs
        else:
            log("probe: three processes at once")
            probes = [subprocess.Popen([sys.executable, "-W", "ignore", str(HERE / "probe_step.py"), str(data / "head"),
                                        "--steps", "12"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                       env=env) for _ in a.seeds]
            results = []
            for pr in probes:
                so, se = pr.communicate(timeout=240)
                if pr.returncode:
                    raise RuntimeError(f"probe failed:\n{se[-3000:]}")
                results.append(json.loads(so.strip().splitlines()[-1]))
            summary["probe"] = results
            step = max(r["median_s"] for r in results)
            budget = a.deadline - (time.time() - T0) - a.eval_reserve - a.export_reserve
            epochs = int(max(a.min_epochs, min(a.max_epochs, budget / (1.1 * step * STEPS_PER_EPOCH))))
            log(f"probe: {results}; step {step:.3f} s with {len(a.seeds)} at once; training budget {budget:.0f} s")
        summary["epochs"] = epochs
        log(f"training {epochs} epochs ({epochs * STEPS_PER_EPOCH} steps) per seed")
        procs = {}
        for s in a.seeds:
            root = ROOT / "runs" / f"g96_s{s}"
            root.mkdir(parents=True, exist_ok=True)
            if not (root / "data").exists():
                (root / "data").symlink_to(data)
            cmd = [sys.executable, "-W", "ignore", str(ROOT / "scripts" / "compare_on_hard_sets.py"), "--root", str(root),
                   "--datasets", "head", "--seeds", str(s), "--variants", "5 tasks", "--spatial_dims", "3",
                   "--size", "96", "--spacing", "1.0", "--n_train", "40", "--n_valid", "16", "--n_test", "48",
                   "--epochs", str(epochs), "--map_weights", "selected", "--fast_steps", "0", "--test_images", "192"]
            procs[s] = subprocess.Popen(cmd, stdout=open(root / "driver.log", "w"), stderr=subprocess.STDOUT, env=env)
        # the smoke run goes on beside the seeds: if it fails, they stop at once (device time left for a mended rerun)
        while any(pr.poll() is None for pr in procs.values()) and time.time() - T0 < a.deadline:
            if "smoke_rc" not in summary and smoke.poll() is not None:
                summary["smoke_rc"] = smoke.returncode
                log(f"smoke run: rc {smoke.returncode}")
                if smoke.returncode:
                    raise RuntimeError("smoke run failed:\n" + (smoke_root / "driver.log").read_text()[-4000:])
            if "smoke_rc" not in summary and time.time() - T0 > 300:
                smoke.kill()  # slow, not broken: let the seeds have the machine
                summary["smoke_rc"] = "stopped at 300 s"
                log("smoke run: still running at 300 s, stopped")
            time.sleep(2)
        for s, pr in procs.items():
            if pr.poll() is None:
                log(f"seed {s}: past the deadline, stopped")
                pr.kill()
            else:
                log(f"seed {s}: rc {pr.returncode}")
            summary[f"seed{s}_rc"] = pr.returncode
    except Exception as e:  # noqa: BLE001 - whatever happened, pack what exists
        log(f"failed: {e}")
        summary["error"] = repr(e)
        for pr in [smoke, *procs.values()] if "procs" in locals() else [smoke] if "smoke" in locals() else []:
            pr.kill()
    finally:
        summary["seconds"] = time.time() - T0
        for s in a.seeds:
            root = ROOT / "runs" / f"g96_s{s}"
            model = root / "runs" / "head" / "5_tasks" / f"seed{s}" / "models" / "model.pt"
            summary[f"seed{s}_train_seconds"] = None
            if (root / "results.json").exists():
                runs = json.loads((root / "results.json").read_text())["runs"]
                summary[f"seed{s}"] = runs[-1]["figures"] if runs else None
                summary[f"seed{s}_train_seconds"] = runs[-1]["train_seconds"] if runs else None
            if model.is_file():
                (out / f"model_seed{s}.pt").write_bytes(model.read_bytes())
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
        with tarfile.open(out / "runs.tar.gz", "w:gz") as tar:
            for root in [ROOT / "runs" / f"g96_s{s}" for s in a.seeds] + [ROOT / "runs" / "g96_smoke"]:
                if not root.exists():
                    continue
                files = [f for f in root.glob("*") if f.is_file()] + sorted((root / "runs").rglob("*"))
                for f in files:  # not through root/data, a link to the volumes
                    if f.is_file() and (f.suffix in {".json", ".csv", ".log", ".md", ".png"} or f.name.startswith("events")):
                        tar.add(f, arcname=str(f.relative_to(ROOT / "runs")))
        log("packed")


if __name__ == "__main__":
    main()
