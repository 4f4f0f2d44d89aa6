#!/usr/bin/env python
"""Pixel AUROC on N pixels: ours vs ``monai.metrics.ROCAUCMetric``, same values, wall-clock seconds.

    python scripts/benchmark_metrics.py --pixels 10000000
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from monai.metrics import ROCAUCMetric

from monai_mtlmad.metrics import aupro, roc_auc


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--pixels", type=int, default=10_000_000)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    labels = torch.rand(args.pixels, generator=g) < 0.05
    scores = torch.rand(args.pixels, generator=g) + 0.3 * labels
    t0 = time.perf_counter()
    ours = roc_auc(scores, labels)
    t_ours = time.perf_counter() - t0
    metric = ROCAUCMetric()
    t0 = time.perf_counter()
    metric(scores.view(-1, 1), labels.view(-1, 1).long())
    monai_value = float(metric.aggregate())
    t_monai = time.perf_counter() - t0
    side = int((args.pixels / 40) ** 0.5)
    maps, masks = scores[: 40 * side * side].view(40, side, side), labels[: 40 * side * side].view(40, side, side)
    t0 = time.perf_counter()
    aupro(maps, masks)
    t_aupro = time.perf_counter() - t0
    row = {
        "pixels": args.pixels,
        "ours_auroc_s": round(t_ours, 3),
        "monai_rocaucmetric_s": round(t_monai, 3),
        "speedup": round(t_monai / t_ours, 1),
        "abs_difference": abs(ours - monai_value),
        "ours_aupro_s": round(t_aupro, 3),
    }
    print(json.dumps(row))


if __name__ == "__main__":
    main()
