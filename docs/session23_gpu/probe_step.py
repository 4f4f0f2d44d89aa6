#!/usr/bin/env python
"""Seconds per joint training step of the bundle's default learner on real preprocessed volumes, as train.json runs
it (batch 4, bf16 autocast on CUDA): the driver sizes the training budget from it.

    python docs/session23_gpu/probe_step.py DATA_DIR --size 96 --spacing 1.0 --steps 15
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from monai_mtlmad.data import bmad_datalist
from monai_mtlmad.data import preprocessing as make_preprocessing
from monai_mtlmad.engines import multitask_train_step
from monai_mtlmad.losses import MultiTaskLoss
from monai_mtlmad.networks import MTLMoENet
from monai_mtlmad.tasks import DEFAULT_TASKS, create_tasks


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("data")
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--spacing", type=float, default=1.0)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--warmup", type=int, default=5)
    a = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    det, _ = make_preprocessing(preset="mri", spatial_size=a.size, spatial_dims=3, rim=0.06, spacing=a.spacing)
    items = bmad_datalist(a.data, "train", None, check=False)[: a.batch]
    images = torch.stack([torch.as_tensor(det(d)["image"]) for d in items]).float().to(device)
    tasks = create_tasks(DEFAULT_TASKS, 3)
    net = MTLMoENet(3, 1, {t.name: t.head for t in tasks}, channels=(16, 32, 64, 128), strides=(2, 2, 2, 2)).to(device)
    criterion = MultiTaskLoss([t.name for t in tasks]).to(device)
    opt = torch.optim.AdamW(list(net.parameters()) + list(criterion.parameters()), 3e-3)
    g = torch.Generator(device=device).manual_seed(0)
    times = []
    for i in range(a.warmup + a.steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            multitask_train_step(net, tasks, criterion, opt, images, g)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= a.warmup:
            times.append(time.perf_counter() - t0)
    times.sort()
    out = {"device": str(device), "size": a.size, "batch": a.batch, "median_s": times[len(times) // 2],
           "min_s": times[0], "max_s": times[-1],
           "peak_mem_gb": torch.cuda.max_memory_allocated() / 1e9 if device.type == "cuda" else None}
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
