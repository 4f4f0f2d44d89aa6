#!/usr/bin/env python
"""Print metrics.json files as tables, each figure beside its trivial baseline.

    python scripts/print_metrics.py runs/demo/metrics.json runs/demo/full_mode/metrics.json
"""

import json
import sys


def fmt(v):
    return "  -  " if v is None else f"{v:.3f}"


def main(*paths: str) -> None:
    for path in paths:
        show(path)


def show(path: str) -> None:
    m = json.loads(open(path).read())
    mode = (m.get("threshold") or {}).get("mode", "full")
    what = "fast mode: the single-pass student" if mode == "fast" else "full mode: every task view"
    print(f"\n{path}: {m['n_images']} images ({m['n_anomalous']} anomalous), {what}\n")
    print(f"{'figure':34s} {'detector':>9s} {'trivial baseline':>18s}")
    rows = [
        ("image AUROC", m["image_auroc"], m["baseline_image_auroc_foreground"], "(foreground fraction)"),
        ("image average precision", m["image_ap"], None, ""),
        ("image F1-max", m["image_f1max"], None, ""),
        ("pixel AUROC", m["pixel_auroc"], m["baseline_pixel_auroc_intensity"], "(raw intensity)"),
        ("pixel AUROC inside anomalous images", m["pixel_auroc_anomalous"], None, ""),
        ("pixel AUPRO (FPR <= 0.3)", m["pixel_aupro"], None, ""),
        ("pixel Dice (best threshold)", m["pixel_dice"], None, ""),
    ]
    for name, v, base, what in rows:
        print(f"{name:34s} {fmt(v):>9s} {fmt(base) if base is not None else '':>9s} {what}")
    if m["per_task"]:
        print("\nimage AUROC of each task alone: " + ", ".join(f"{k} {fmt(v)}" for k, v in m["per_task"].items()))
    print(f"flagged at the calibrated threshold: {m['flagged_fraction']:.2f} of the images")
    t = m.get("threshold")
    if t:
        print(f"false-positive rate on this split's {t['n_normal']} normal images: {fmt(t['measured_fpr'])} "
              f"(nominal {t['nominal_fpr']:.3f}, {t['image_score']}); true-positive rate {fmt(t['tpr'])}")
    c, model = m.get("calibration"), m.get("model")
    if c:
        print(f"calibrated on {c['images']} normal images ({c.get('calibration_valid_normals', '?')} from valid, "
              f"{c.get('calibration_train_holdout', '?')} held out of training; {c['folds']} cross-fitting folds)")
    if model:
        print(f"exported weights of epoch {model['epoch']} of {model.get('last_epoch', '?')}: {model['selection']}")
    print()


if __name__ == "__main__":
    main(*(sys.argv[1:] or ["runs/demo/metrics.json"]))
