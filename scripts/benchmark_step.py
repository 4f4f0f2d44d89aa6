#!/usr/bin/env python
"""Parameter counts and the time of one joint training step (all tasks), MoE vs shared block.

Measures the whole step: building every task's views on the batch, forward, backward, optimizer step. Median of
``--repeats`` steps after one warm-up step. Example:

    python scripts/benchmark_step.py --configs 2d:8x256 3d:2x96 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import torch

from monai_mtlmad.engines import multitask_train_step
from monai_mtlmad.losses import MultiTaskLoss
from monai_mtlmad.networks import MTLMoENet
from monai_mtlmad.tasks import DEFAULT_TASKS, create_tasks


def bench(spatial_dims: int, batch: int, size: int, moe: bool, repeats: int, device: str) -> dict:
    torch.manual_seed(0)
    tasks = create_tasks(DEFAULT_TASKS, spatial_dims)
    net = MTLMoENet(spatial_dims, 1, {t.name: t.head for t in tasks}, moe=moe).to(device)
    criterion = MultiTaskLoss([t.name for t in tasks])
    opt = torch.optim.AdamW(net.parameters(), 1e-3)
    images = torch.rand((batch, 1) + (size,) * spatial_dims, device=device)
    g = torch.Generator(device=device).manual_seed(0)
    times = []
    for i in range(repeats + 1):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        multitask_train_step(net, tasks, criterion, opt, images, g)
        if device == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t0)
    return {
        "config": f"{spatial_dims}D {batch}x1x{'x'.join([str(size)] * spatial_dims)}",
        "moe": moe,
        "parameters": sum(p.numel() for p in net.parameters()),
        "views_per_step": batch * len(tasks),
        "step_s_median": round(statistics.median(times), 3),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["2d:8x256", "3d:2x96"], help="DIMd:BATCHxSIZE")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shared", action="store_true", help="also time the moe=False ablation")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for cfg in args.configs:
        dims, rest = cfg.split(":")
        batch, size = (int(v) for v in rest.split("x"))
        for moe in (True, False) if args.shared else (True,):
            row = bench(int(dims[0]), batch, size, moe, args.repeats, args.device)
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
