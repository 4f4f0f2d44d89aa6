#!/usr/bin/env python
"""The BMAD comparison in one command: train and evaluate the bundle on every BMAD dataset folder under ROOT and
print a table in BMAD's format beside the published figures.

BMAD (Bao et al., CVPRW 2024, arXiv 2306.11876) cannot be downloaded by this package; point ROOT at your copy. A
folder is recognised by its name (``BraTS2021``, ``Liver``/``LiverCT``, ``RESC``, ``OCT2017``, ``RSNA``,
``Camelyon16`` and the aliases of :func:`monai_mtlmad.data.bmad_info`), ROOT itself included; its layout may be any of
those :func:`monai_mtlmad.data.bmad_datalist` accepts.

Per dataset, the bundle runs as a user runs it (``train.json`` then ``evaluate.json`` on the test split) with that
dataset's defaults: its preprocessing preset and channels (:data:`monai_mtlmad.data.BMAD_DATASETS`), no foreground
erosion (BMAD's slices are skull-stripped or have no bright rim), BMAD's 224 x 224 input size, and ``--steps``
optimisation steps rounded to whole epochs. Reported as BMAD reports: image AUROC on every dataset, pixel AUROC and
PRO (AUPRO up to FPR 0.3) where the test split has masks, in %, mean ± std over ``--seeds``; beside them the trivial
scores on the same test images (foreground fraction for images, raw intensity for pixels) and the published rows.

    python benchmarks/bmad.py /data/BMAD --steps 20000 --seeds 0 1 2 --output benchmarks/results/bmad
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bundle_runs import bundle  # noqa: E402

COLUMNS = ("brats", "liver", "resc", "oct2017", "rsna", "camelyon16")
HEADINGS = {"brats": "BraTS", "liver": "Liver", "resc": "RESC", "oct2017": "OCT2017", "rsna": "RSNA",
            "camelyon16": "Camelyon16"}

# BMAD's CVPRW table (test set; image AUROC / pixel AUROC / PRO in %) and QFAE (WACV 2026, image AUROC only).
PUBLISHED = {
    "PatchCore": {"brats": (91.65, 96.97, 85.68), "liver": (60.28, 96.43, 87.75), "resc": (91.55, 96.48, 85.84),
                  "oct2017": (98.57,), "rsna": (76.14,), "camelyon16": (69.34,)},
    "RD4AD": {"brats": (89.45, 96.45, 85.86), "liver": (60.38, 96.01, 90.29), "resc": (87.77, 96.18, 85.62),
              "oct2017": (97.30,), "rsna": (67.63,), "camelyon16": (66.81,)},
    "SimpleNet": {"brats": (82.52, 94.76, 78.38), "liver": (72.28, 97.51, 91.07), "resc": (76.15, 77.14, 49.07),
                  "oct2017": (94.68,), "rsna": (69.12,), "camelyon16": (62.38,)},
    "CFA": {"brats": (84.38, 96.33, 83.78), "liver": (62.00, 97.24, 92.75), "resc": (69.90, 91.10, 69.77),
            "oct2017": (79.47,), "rsna": (66.83,), "camelyon16": (65.64,)},
    "MKD": {"brats": (81.47, 89.44, 67.59), "liver": (60.72, 96.06, 91.08), "resc": (89.00, 86.74, 66.17),
            "oct2017": (96.74,), "rsna": (82.01,), "camelyon16": (77.54,)},
    "CS-Flow": {"brats": (90.91,), "liver": (59.37,), "resc": (87.34,), "oct2017": (98.47,), "rsna": (83.20,),
                "camelyon16": (68.38,)},
    "CutPaste": {"brats": (78.81,), "liver": (59.33,), "resc": (90.23,), "oct2017": (96.76,), "rsna": (82.61,),
                 "camelyon16": (75.18,)},
    "DRAEM (from scratch)": {"brats": (62.35, 82.29, 63.76), "liver": (69.95, 87.45, 79.29),
                             "resc": (83.22, 86.79, 63.55), "oct2017": (88.03,), "rsna": (67.70,),
                             "camelyon16": (52.35,)},
    "f-AnoGAN (from scratch)": {"brats": (77.26,), "liver": (58.53,), "resc": (77.42,), "oct2017": (73.42,),
                                "rsna": (55.15,), "camelyon16": (69.49,)},
    "QFAE (WACV 2026)": {"brats": (94.1,), "liver": (68.4,), "resc": (91.9,), "rsna": (84.2,)},
}
IMAGE_SIZE = 224  # BMAD's baselines
FIGURES = ("image_auroc", "pixel_auroc", "pixel_aupro")


def find_datasets(root: Path) -> dict[str, Path]:
    """``{dataset key: folder}`` for ROOT and its sub-folders whose names BMAD's aliases recognise."""
    from monai_mtlmad.data import BMAD_DATASETS, bmad_info

    keys = {info: key for key, info in BMAD_DATASETS.items()}
    found = {}
    for folder in [root, *sorted(p for p in root.iterdir() if p.is_dir())]:
        info = bmad_info(None, folder)
        if info is not None and keys[info] not in found:
            found[keys[info]] = folder
    return found


def run_dataset(key: str, folder: Path, seed: int, args, work: Path) -> dict:
    """Train and evaluate the bundle on one dataset with its defaults; the test metrics."""
    from monai_mtlmad.data import BMAD_DATASETS, bmad_datalist

    info = BMAD_DATASETS[key]
    n_train = len(bmad_datalist(folder, "train", key, check=False))
    batch = 4
    epochs = max(1, math.ceil(args.steps / max(1, n_train // batch)))
    out = work / key / f"seed{seed}"
    common = ["--dataset_dir", str(folder), "--bmad_dataset", key, "--preset", info.preset, "--in_channels",
              str(info.channels), "--image_size", str(args.image_size), "--rim", "0.0"]
    bundle("train.json", *common, "--output_dir", str(out), "--max_epochs", str(epochs), "--val_interval",
           str(max(1, epochs // 2)), "--seed", str(seed), "--batch_size", str(batch), "--fast_steps",
           str(args.fast_steps), "--num_workers", str(args.num_workers), "--overwrite", "true")
    bundle("evaluate.json", "--dataset_dir", str(folder), "--bmad_dataset", key, "--model_path",
           str(out / "models" / "model.pt"), "--output_dir", str(out / "test"), "--num_workers", str(args.num_workers))
    return json.loads((out / "test" / "metrics.json").read_text())


def cell(values: list[float | None]) -> str:
    """``a / b / c`` in %, each ``mean±std`` over seeds where there are several."""
    parts = []
    for v in values:
        if v is None:
            continue
        parts.append(f"{v:.2f}" if isinstance(v, float) else v)
    return " / ".join(parts) if parts else "–"


def ours(runs: list[dict], key: str) -> list:
    """Mean (± std) over seeds of the image, pixel and PRO figures, in %; None where there is none."""
    out = []
    for name in FIGURES:
        values = [100 * r["metrics"][name] for r in runs if r["dataset"] == key and r["metrics"].get(name) is not None]
        if not values:
            out.append(None)
        elif len(values) == 1:
            out.append(values[0])
        else:
            out.append(f"{statistics.mean(values):.2f}±{statistics.stdev(values):.2f}")
    return out


def trivial(runs: list[dict], key: str) -> list:
    metrics = next((r["metrics"] for r in runs if r["dataset"] == key), {})
    image, pixel = metrics.get("baseline_image_auroc_foreground"), metrics.get("baseline_pixel_auroc_intensity")
    return [None if v is None else 100 * v for v in (image, pixel)]


def table(runs: list[dict], keys: list[str], n_seeds: int) -> str:
    lines = ["| method | " + " | ".join(HEADINGS[k] for k in keys) + " |", "|---|" + "---|" * len(keys)]
    for method, figures in PUBLISHED.items():
        lines.append(f"| {method} | " + " | ".join(cell(list(figures.get(k, ()))) for k in keys) + " |")
    lines.append(f"| **MTL-MAD (this run, {n_seeds} seed{'s' * (n_seeds > 1)})** | "
                 + " | ".join(cell(ours(runs, k)) for k in keys) + " |")
    lines.append("| trivial: foreground fraction / raw intensity | " + " | ".join(cell(trivial(runs, k)) for k in keys) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", type=Path, help="a BMAD dataset folder, or a folder holding several")
    p.add_argument("--steps", type=int, default=20000, help="optimisation steps per dataset (whole epochs)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--datasets", nargs="+", default=None, choices=COLUMNS, help="default: every one found")
    p.add_argument("--image_size", type=int, default=IMAGE_SIZE)
    p.add_argument("--fast_steps", type=int, default=0, help="also distil the fast mode and evaluate in it")
    p.add_argument("--num_workers", type=int, default=2)
    p.add_argument("--output", default="benchmarks/results/bmad", help="writes OUTPUT.json and OUTPUT.md")
    p.add_argument("--work_dir", default="runs/bmad", help="the bundle's runs")
    args = p.parse_args()

    found = find_datasets(args.root)
    keys = [k for k in COLUMNS if k in found and (args.datasets is None or k in args.datasets)]
    if not keys:
        raise SystemExit(f"{args.root}: no BMAD dataset folder found (names such as BraTS2021, RESC, RSNA; see --help).")
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    runs = []
    for seed in args.seeds:
        for key in keys:
            metrics = run_dataset(key, found[key], seed, args, Path(args.work_dir))
            runs.append({"dataset": key, "folder": str(found[key]), "seed": seed, "metrics": metrics})
            print(f"{HEADINGS[key]} seed {seed}: " + cell(ours(runs[-1:], key)), flush=True)
    header = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": platform.processor() or platform.machine(),
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    text = table(runs, keys, len(args.seeds))
    out.with_suffix(".json").write_text(json.dumps({**header, "runs": runs}, indent=1))
    out.with_suffix(".md").write_text(
        f"# BMAD: MTL-MAD beside the published figures\n\n`{header['command']}`\n\n{header['date']}, {header['machine']}; "
        f"{args.steps} steps per dataset, {args.image_size} px. Cells: image AUROC / pixel AUROC / PRO in % (test "
        f"set; pixel figures where the set has masks). Published rows: BMAD's CVPRW table and QFAE.\n\n{text}\n",
        encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
