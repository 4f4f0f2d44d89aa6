#!/usr/bin/env python
"""Training throughput, scoring latency and throughput, and peak memory, beside a plain MONAI UNet's.

Every figure stands beside the same measurement of a plain MONAI ``UNet((16, 32, 64, 128), strides (2, 2, 2),
num_res_units=1)`` in the same run: the practical ceiling of a dense convolutional network on the device. Rows:

- ``train``: one optimiser step over a batch (MTL-MAD: every task's views built on the batch, forward, backward,
  step; the UNet: L1 reconstruction of the batch), images per second; MoE and the shared-block ablation.
- ``score 1``: one image scored (``AnomalyScorer.score``: foreground, every task view, normalisation, fusion,
  quantile, p-value), milliseconds, full mode (every task view) and fast mode (the distilled single-pass student);
  the UNet's forward pass.
- ``score batch``: images per second at ``--score_batch`` images per call.
- 3D: training on ``--roi3d`` crops, scoring a ``--volume`` volume with sliding windows of ``--roi3d``.
- ``inference.json`` (``--bundle_images`` > 0): the bundle's inference run on that many PNG slices of ``--size2d``,
  both modes, milliseconds per slice as the evaluator reports its run (reading, preprocessing, scoring, inverting
  and writing the map, the PNG pictures and the overlay; the process start and imports left out).

Networks are untrained (speed does not depend on the weights); the scorers are calibrated on a few random images
only so that they run the whole scoring path. Peak memory: the process's resident set (CPU, its high-water mark
reset per row through ``/proc/self/clear_refs``, so it includes what the process already holds) or
``torch.cuda.max_memory_allocated``. Medians over ``--repeats`` after a warm-up.

Examples::

    python benchmarks/speed.py --json benchmarks/results/speed_cpu.json --markdown benchmarks/results/speed_cpu.md
    python benchmarks/speed.py --device cuda --amp --train_batch 64 --score_batch 256   # on a GPU, bf16
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import sys
import time
import warnings
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from monai.networks.nets import UNet

from monai_mtlmad.engines import multitask_train_step
from monai_mtlmad.losses import MultiTaskLoss
from monai_mtlmad.networks import MTLMoENet
from monai_mtlmad.scoring import AnomalyScorer
from monai_mtlmad.scoring.student import DistilledStudent
from monai_mtlmad.tasks import DEFAULT_TASKS, create_tasks

CEILING_CHANNELS = (16, 32, 64, 128)


def ceiling_unet(spatial_dims: int) -> UNet:
    return UNet(spatial_dims, 1, 1, channels=CEILING_CHANNELS, strides=(2, 2, 2), num_res_units=1)


class Meter:
    """Median wall time of a callable and the peak memory while it ran."""

    def __init__(self, device: torch.device, repeats: int, amp: bool) -> None:
        self.device, self.repeats, self.amp = device, repeats, amp

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def _reset_peak(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        else:
            try:  # Linux: "5" resets the resident-set high-water mark of this process
                Path("/proc/self/clear_refs").write_text("5")
            except OSError:
                pass

    def _peak_gb(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated() / 2**30
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**20
        except OSError:
            pass
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

    def __call__(self, fn, repeats: int | None = None, warmup: bool = True) -> tuple[float, float]:
        """``(median seconds, peak GB)`` of ``fn()``, after one warm-up call unless ``warmup`` is False (for calls of
        minutes, where the first call's overhead does not matter)."""
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.amp else nullcontext()
        self._reset_peak()
        times = []
        for i in range(int(not warmup), (repeats or self.repeats) + 1):
            self._sync()
            t0 = time.perf_counter()
            with autocast:
                fn()
            self._sync()
            if i:
                times.append(time.perf_counter() - t0)
        return statistics.median(times), self._peak_gb()


def learner(spatial_dims: int, moe: bool, device, channels_last: bool):
    tasks = create_tasks(DEFAULT_TASKS, spatial_dims)
    net = MTLMoENet(spatial_dims, 1, {t.name: t.head for t in tasks}, moe=moe).to(device)
    if channels_last and spatial_dims == 2:
        net = net.to(memory_format=torch.channels_last)
    return net, tasks


def train_rows(meter: Meter, spatial_dims: int, batch: int, size: int, args) -> list[dict]:
    device = meter.device
    shape = (batch, 1) + (size,) * spatial_dims
    images = torch.rand(shape, device=device)
    rows = []
    unet = ceiling_unet(spatial_dims).to(device)
    opt = torch.optim.AdamW(unet.parameters(), 1e-3)

    def unet_step():
        loss = F.l1_loss(unet(images), images)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    ceiling, peak = meter(unet_step)
    rows.append(row("train", spatial_dims, shape, "MONAI UNet (ceiling)", batch / ceiling, "images/s", peak,
                    params=n_params(unet)))
    for moe in (True, False):
        net, tasks = learner(spatial_dims, moe, device, args.channels_last)
        criterion = MultiTaskLoss([t.name for t in tasks]).to(device)
        opt2 = torch.optim.AdamW(list(net.parameters()) + list(criterion.parameters()), 1e-3)
        g = torch.Generator(device=device).manual_seed(0)
        step = lambda: multitask_train_step(net, tasks, criterion, opt2, images, g)  # noqa: E731
        if args.compile:
            net.forward = torch.compile(net.forward)
        t, peak = meter(step)
        name = f"MTL-MAD, {'MoE' if moe else 'shared block'} ({len(tasks)} task views per image)"
        rows.append(row("train", spatial_dims, shape, name, batch / t, "images/s", peak, ratio=t / ceiling,
                        params=n_params(net)))
    return rows


def calibrated_scorer(spatial_dims: int, roi: int, device, args) -> AnomalyScorer:
    net, tasks = learner(spatial_dims, True, device, args.channels_last)
    net.eval()
    roi_size = (roi,) * spatial_dims
    # the default scorer (synthetic-lesion image score) and a student as distill_student builds it (maps and task
    # errors), so the fast row times the default fast path: one pass, then the same feature vector and fusion
    scorer = AnomalyScorer(net, tasks, folds=2, roi_size=roi_size, batch_size=args.window_batch)
    calib = torch.rand((4, 1) + roi_size, device=device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "calibrating on 4 normal images": speed does not care
        scorer.fit(calib)
    names = [t.name for t in tasks if t.kind == "dense"]
    student = DistilledStudent(spatial_dims, 1, names, scorer.fitted_map_weights, roi_size=roi_size,
                               batch_size=args.window_batch, score_tasks=[t.name for t in tasks],
                               task_weights=scorer.weights).to(device)
    student.calibrate([calib], scorer.rim, scorer.fpr, scorer.pixel_fpr, folds=2)
    scorer.student = student
    return scorer


def score_rows(meter: Meter, spatial_dims: int, size: int, roi: int, batch: int, args) -> list[dict]:
    device = meter.device
    scorer = calibrated_scorer(spatial_dims, roi, device, args)
    unet = ceiling_unet(spatial_dims).to(device).eval()
    rows = []
    for n in (1, batch):
        shape = (n, 1) + (size,) * spatial_dims
        images = torch.rand(shape, device=device)
        if size == roi:
            forward = lambda: unet(images)  # noqa: E731
        else:
            from monai.inferers import SlidingWindowInferer

            inferer = SlidingWindowInferer((roi,) * spatial_dims, sw_batch_size=args.window_batch, overlap=0.25,
                                           mode="gaussian")
            forward = lambda: inferer(images, unet)  # noqa: E731
        with torch.no_grad():
            ceiling, peak = meter(forward)
        kind = "score 1" if n == 1 else "score batch"
        unit = "ms" if n == 1 else "images/s"
        value = (lambda t: 1000 * t) if n == 1 else (lambda t: n / t)
        rows.append(row(kind, spatial_dims, shape, "MONAI UNet forward (ceiling)", value(ceiling), unit, peak,
                        params=n_params(unet)))
        for fast in (True, False):
            if not fast and spatial_dims == 3 and not args.full_3d:
                continue
            if not fast and n > 1 and spatial_dims == 3:
                continue  # a batch of volumes in full mode takes many minutes on a CPU; one volume says enough
            scorer.use_fast(fast)
            slow = not fast and spatial_dims == 3
            t, peak = meter(lambda: scorer.score(images), 1 if slow else None, warmup=not slow)
            name = "MTL-MAD fast mode (student)" if fast else "MTL-MAD full mode (every task view)"
            rows.append(row(kind, spatial_dims, shape, name, value(t), unit, peak, ratio=t / ceiling))
    return rows


def bundle_rows(size: int, n_images: int, args) -> list[dict]:
    """``inference.json`` end to end on ``n_images`` PNG slices, with a model file holding both modes."""
    import re
    import subprocess
    import tempfile

    from monai_mtlmad.data import make_demo_dataset

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = make_demo_dataset(Path(tmp) / "data", 2, n_train=1, n_valid=1, n_test=n_images, size=size)
        scorer = calibrated_scorer(2, size, torch.device("cpu"), args)
        scorer.preprocessing_config = _png_preprocessing(size)
        model = Path(tmp) / "model.pt"
        scorer.save(model)
        for fast in (True, False):
            out = Path(tmp) / f"maps_{fast}"
            cmd = [sys.executable, "-W", "ignore", "-m", "monai.bundle", "run", "--config_file",
                   str(Path(__file__).resolve().parents[1] / "bundle" / "configs" / "inference.json"),
                   "--model_path", str(model), "--dataset_dir", str(data / "test"), "--output_dir", str(out),
                   "--fast", str(fast).lower(), "--device", "$torch.device('cpu')", "--batch_size", "1"]
            env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
            done = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if done.returncode:
                raise RuntimeError(done.stderr[-2000:])
            h, m, sec = re.findall(r"AnomalyEvaluator - INFO - Engine run finished. Time taken: (\d+):(\d+):([\d.]+)",
                                   done.stdout + done.stderr)[-1]
            seconds = int(h) * 3600 + int(m) * 60 + float(sec)
            written = len(list(out.rglob("*_map.npy")))
            name = "inference.json, fast mode" if fast else "inference.json, full mode"
            rows.append(row("inference.json per slice", 2, (n_images, 1, size, size), name,
                            1000 * seconds / n_images, "ms", float("nan")))
            rows[-1]["maps_written"] = written
    return rows


def _png_preprocessing(size: int) -> dict:
    from monai_mtlmad.scoring.scorer import _preprocessing_config

    return _preprocessing_config({"preset": "png", "spatial_size": size})


def n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def row(kind, spatial_dims, shape, method, value, unit, peak, ratio=None, params=None) -> dict:
    out = {"measure": kind, "input": "x".join(str(s) for s in shape), "method": method,
           "value": round(value, 2), "unit": unit, "peak_memory_gb": None if peak != peak else round(peak, 2)}
    if ratio is not None:
        # how many times slower than the plain UNet: our time per step or per call over the ceiling's
        out["x_ceiling"] = round(ratio, 2)
    if params is not None:
        out["parameters"] = params
    print(json.dumps(out), flush=True)
    return out


def markdown(rows: list[dict], header: dict) -> str:
    lines = [
        f"Measured {header['date']} on {header['machine']}, torch {header['torch']}, {header['threads']} threads, "
        f"device {header['device']}{', bf16 autocast' if header['amp'] else ''}. Command: `{header['command']}`.",
        "",
        "`x ceiling`: how many times slower than the plain UNet measured in the same run (our time per training step "
        "or per scoring call over the UNet's; 1 = as fast as the ceiling). Peak memory: the process's resident set "
        "(CPU; it includes the ~0.5 GB of torch and MONAI themselves) or the allocated CUDA memory.",
        "",
        "| measure | input | method | value | unit | x ceiling | peak memory (GB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['measure']} | {r['input']} | {r['method']} | {r['value']} | {r['unit']} | "
                     f"{r.get('x_ceiling', '')} | {r['peak_memory_gb'] if r['peak_memory_gb'] is not None else ''} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--size2d", type=int, default=256, help="2D image side (training and scoring)")
    parser.add_argument("--roi3d", type=int, default=64, help="3D training crop and sliding-window side")
    parser.add_argument("--volume", type=int, default=128, help="3D scored volume side")
    parser.add_argument("--train_batch", type=int, default=8, help="2D training batch (3D: a quarter, at least 1)")
    parser.add_argument("--score_batch", type=int, default=16, help="2D images per scoring call (3D: 2 volumes)")
    parser.add_argument("--window_batch", type=int, default=8, help="sliding windows per network pass")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dims", nargs="+", type=int, default=[2, 3], choices=[2, 3])
    parser.add_argument("--bundle_images", type=int, default=32, help="slices for the inference.json rows (0: none)")
    parser.add_argument("--skip_train", action="store_true")
    parser.add_argument("--full_3d", action=argparse.BooleanOptionalAction, default=True,
                        help="also time one 3D volume in full mode (minutes on a CPU)")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast around every measured call")
    parser.add_argument("--channels_last", action="store_true", help="2D learner in channels-last memory format")
    parser.add_argument("--compile", action="store_true", help="torch.compile the learner's forward (training rows)")
    parser.add_argument("--json", help="write the rows and the run's header here")
    parser.add_argument("--markdown", help="write a markdown table here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    header = {
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *(argv if argv is not None else sys.argv[1:])]),
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs"
        + (f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""),
        "torch": torch.__version__, "threads": args.threads, "device": str(device), "amp": args.amp,
    }
    meter = Meter(device, args.repeats, args.amp)
    rows: list[dict] = []
    for dims in args.dims:
        if dims == 2:
            if not args.skip_train:
                rows += train_rows(meter, 2, args.train_batch, args.size2d, args)
            rows += score_rows(meter, 2, args.size2d, args.size2d, args.score_batch, args)
            if args.bundle_images > 0 and device.type == "cpu":
                rows += bundle_rows(args.size2d, args.bundle_images, args)
        else:
            if not args.skip_train:
                rows += train_rows(meter, 3, max(1, args.train_batch // 4), args.roi3d, args)
            rows += score_rows(meter, 3, args.volume, args.roi3d, 2, args)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({**header, "rows": rows}, indent=1))
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(markdown(rows, header), encoding="utf-8")
    return rows


if __name__ == "__main__":
    main()
