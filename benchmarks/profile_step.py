#!/usr/bin/env python
"""Where one joint training step spends its time: each task's views, the forward pass (per network part), the
backward pass and the optimiser step; and the operators that cost most (``torch.profiler``).

    python benchmarks/profile_step.py --dims 2 --batch 8 --size 256 --json benchmarks/results/profile_step_cpu.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from monai_mtlmad.losses import MultiTaskLoss
from monai_mtlmad.networks import MTLMoENet
from monai_mtlmad.tasks import DEFAULT_TASKS, create_tasks


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def profile(dims: int, batch: int, size: int, moe: bool, repeats: int, device: torch.device, amp: bool) -> dict:
    torch.manual_seed(0)
    tasks = create_tasks(DEFAULT_TASKS, dims)
    net = MTLMoENet(dims, 1, {t.name: t.head for t in tasks}, moe=moe).to(device)
    criterion = MultiTaskLoss([t.name for t in tasks]).to(device)
    opt = torch.optim.AdamW(list(net.parameters()) + list(criterion.parameters()), 1e-3)
    images = torch.rand((batch, 1) + (size,) * dims, device=device)
    g = torch.Generator(device=device).manual_seed(0)
    parts: dict[str, list[float]] = {}

    def timed(name, fn):
        _sync(device)
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        parts.setdefault(name, []).append(time.perf_counter() - t0)
        return out

    # the forward pass split by network part: forward hooks time the encoder, MoE blocks, decoder and heads
    hooks, starts = [], {}
    groups = {"encoder": net.encoder, "moe blocks": torch.nn.ModuleList(net.moe_blocks()), "decoder": net.decoder,
              "up-sampling": torch.nn.ModuleList([*net.up, net.final_up]), "heads": net.heads}
    def pre_hook(module, inputs):  # returns None: a forward pre-hook's return value would replace the inputs
        _sync(device)
        starts[id(module)] = time.perf_counter()

    def post_hook(group):
        def hook(module, inputs, output):
            _sync(device)
            acc[group] = acc.get(group, 0.0) + time.perf_counter() - starts[id(module)]

        return hook

    for group, container in groups.items():
        modules = container.values() if isinstance(container, torch.nn.ModuleDict) else container.children()
        for m in modules:
            hooks += [m.register_forward_pre_hook(pre_hook), m.register_forward_hook(post_hook(group))]
    acc: dict[str, float] = {}
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp)
    for i in range(repeats + 1):
        acc.clear()
        net.train()
        with torch.no_grad():
            views = [timed(f"views: {t.name}", lambda t=t: t.training_views(images, g)) for t in tasks]
            inputs = torch.cat([v.inputs for v in views])
            ids = torch.cat([torch.full((v.inputs.shape[0],), k, dtype=torch.long, device=device) for k, v in enumerate(views)])
        with autocast:
            outputs = timed("forward (all)", lambda: net(inputs, ids))
            losses = timed("losses", lambda: criterion({t.name: t.loss(outputs[t.name], v) for t, v in zip(tasks, views)},
                                                       net.aux_loss() if moe else None))
        opt.zero_grad(set_to_none=True)
        timed("backward", lambda: losses[0].backward())
        timed("optimiser step", opt.step)
        for grp, v in acc.items():
            parts.setdefault(f"forward: {grp}", []).append(v)
        if i == 0:  # warm-up
            parts = {}
    for h in hooks:
        h.remove()
    medians = {k: statistics.median(v) for k, v in parts.items()}
    step = sum(v for k, v in medians.items() if not k.startswith("forward: "))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]
                                + ([torch.profiler.ProfilerActivity.CUDA] if device.type == "cuda" else [])) as prof:
        with torch.no_grad():
            views = [t.training_views(images, g) for t in tasks]
            inputs = torch.cat([v.inputs for v in views])
            ids = torch.cat([torch.full((v.inputs.shape[0],), k, dtype=torch.long, device=device) for k, v in enumerate(views)])
        with autocast:
            outputs = net(inputs, ids)
            total, _ = criterion({t.name: t.loss(outputs[t.name], v) for t, v in zip(tasks, views)},
                                 net.aux_loss() if moe else None)
        total.backward()
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key), reverse=True)[:12]
    top = [{"op": e.key, "self_ms": round(getattr(e, key) / 1000, 1), "calls": e.count} for e in events]
    return {
        "config": f"{dims}D {batch}x1x{'x'.join([str(size)] * dims)}", "moe": moe, "views": int(inputs.shape[0]),
        "step_s": round(step, 3),
        "parts_s": {k: round(v, 3) for k, v in sorted(medians.items(), key=lambda kv: -kv[1])},
        "top_ops": top,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dims", type=int, default=2, choices=[2, 3])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast")
    parser.add_argument("--json", help="write the result here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [profile(args.dims, args.batch, args.size, moe, args.repeats, torch.device(args.device), args.amp)
            for moe in (True, False)]
    text = json.dumps(rows, indent=1)
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text)


if __name__ == "__main__":
    main()
