"""The MONAI Bundle through `python -m monai.bundle`: metadata, network check, train -> evaluate -> inference in
2D and 3D, resuming a killed run, and DDP with gloo under torchrun."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from monai_mtlmad.data import DEMO_AFFINE, make_demo_dataset

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "bundle" / "configs"
METRIC_KEYS = [
    "image_auroc", "image_ap", "image_f1max", "pixel_auroc", "pixel_aupro", "pixel_dice",
    "pixel_auroc_anomalous", "baseline_image_auroc_foreground", "baseline_pixel_auroc_intensity",
]


def bundle(*args, timeout=600, check=True):
    cmd = [sys.executable, "-W", "ignore", "-m", "monai.bundle", *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def configs(*names):
    return str([str(CONFIGS / f"{n}.json") for n in names])


def common(data, run, dims, size):
    return ["--bundle_root", str(ROOT / "bundle"), "--dataset_dir", str(data), "--output_dir", str(run),
            "--spatial_dims", str(dims), "--image_size", str(size), "--num_workers", "0", "--batch_size", "2"]


def test_metadata_and_network_verify():
    out = bundle("verify_metadata", "--meta_file", str(CONFIGS / "metadata.json"), "--filepath", str(CONFIGS / "schema.json"))
    assert "metadata is verified with no error" in out.stdout + out.stderr
    out = bundle("verify_net_in_out", "verify_net", "--meta_file", str(CONFIGS / "metadata.json"),
                 "--config_file", str(CONFIGS / "train.json"))
    assert "data shape of network is verified with no error" in out.stdout + out.stderr


def test_config_workflow_properties(tmp_path):
    from monai.bundle import ConfigWorkflow

    import torch

    from monai_mtlmad.data import head_phantoms
    from monai_mtlmad.networks import MTLMoENet
    from monai_mtlmad.scoring import AnomalyScorer
    from monai_mtlmad.tasks import DEFAULT_TASKS, create_tasks

    data = make_demo_dataset(tmp_path / "data", 2, n_train=2, n_valid=2, n_test=2, size=32)
    tasks = create_tasks(DEFAULT_TASKS, 2)
    net = MTLMoENet(2, 1, {t.name: t.head for t in tasks})  # the configs' defaults
    model = tmp_path / "model.pt"
    AnomalyScorer(net, tasks).fit(torch.from_numpy(head_phantoms(2, (32, 32)))).save(model)
    for config, kind in ((CONFIGS / "train.json", "train"), (CONFIGS / "inference.json", "infer")):
        wf = ConfigWorkflow(config_file=str(config), meta_file=str(CONFIGS / "metadata.json"),
                            logging_file=str(CONFIGS / "logging.conf"), workflow_type=kind,
                            dataset_dir=str(data), output_dir=str(tmp_path / kind), image_size=32, num_workers=0,
                            model_path=str(model))
        wf.initialize()
        assert wf.check_properties() in (None, [])  # every required MONAI train/infer property is defined


@pytest.mark.parametrize("dims,size", [(2, 32), (3, 32)])
def test_train_evaluate_infer(tmp_path, dims, size):
    data = make_demo_dataset(tmp_path / "data", dims, n_train=6, n_valid=4, n_test=4, size=size)
    run = tmp_path / "run"
    bundle("run", "--config_file", str(CONFIGS / "train.json"), *common(data, run, dims, size),
           "--max_epochs", "2", "--val_interval", "1")
    assert (run / "models" / "model.pt").exists()
    assert (run / "checkpoints" / "checkpoint_epoch=2.pt").exists()
    assert list(run.glob("events.out.tfevents.*"))
    bundle("run", "--config_file", configs("train", "evaluate"), *common(data, run, dims, size))
    metrics = json.loads((run / "metrics.json").read_text())
    for key in METRIC_KEYS:
        assert key in metrics
        assert metrics[key] is None or 0 <= metrics[key] <= 1
    assert metrics["n_images"] == 4 and metrics["pixel_auroc"] is not None
    assert set(metrics["per_task"]) == {"inpainting", "jigsaw", "orientation", "pseudo_anomaly", "pseudo_label"}
    rows = list(csv.DictReader(open(run / "scores.csv")))
    assert len(rows) == 4 and {r["label"] for r in rows} == {"0", "1"}
    assert len(list((run / "overlays").glob("*.png"))) >= 2
    out = tmp_path / "inference"
    src = data / "test" / "Ungood" / "img"
    bundle("run", "--config_file", str(CONFIGS / "inference.json"), *common(src, out, dims, size),
           "--model_path", str(run / "models" / "model.pt"))
    scores = list(csv.DictReader(open(out / "scores.csv")))
    assert len(scores) == 2 and all(r["anomalous"] in ("yes", "no") for r in scores)
    for r in scores:
        stem = Path(r["file"]).name.split(".")[0]
        if dims == 2:
            assert (out / f"{stem}_overlay.png").exists()
            assert np.load(out / f"{stem}_map.npy").shape == (size, size)
        else:
            written = nib.load(out / f"{stem}_map.nii.gz")
            source = nib.load(r["file"])
            assert written.shape[:3] == source.shape[:3]
            np.testing.assert_allclose(written.affine, DEMO_AFFINE, atol=1e-4)


def test_resume_a_killed_run(tmp_path):
    data = make_demo_dataset(tmp_path / "data", 2, n_train=8, n_valid=2, n_test=2, size=32)
    run = tmp_path / "run"
    args = ["run", "--config_file", str(CONFIGS / "train.json"), *common(data, run, 2, 32), "--max_epochs", "30",
            "--val_interval", "100"]
    proc = subprocess.Popen([sys.executable, "-W", "ignore", "-m", "monai.bundle", *args], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = run / "checkpoints"
    deadline = time.time() + 300
    while time.time() < deadline and not list(ckpt.glob("checkpoint_epoch=[2-9]*.pt")):
        time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = sorted(int(p.name.split("=")[1].split(".")[0]) for p in ckpt.glob("checkpoint_epoch=*.pt"))
    assert saved and saved[-1] < 30, "the run was not killed mid-way"
    assert not (run / "models" / "model.pt").exists()
    out = bundle(*args[:-4], "--max_epochs", str(saved[-1] + 2), "--val_interval", "100", "--resume", "true")
    log = out.stdout + out.stderr
    assert f"checkpoint_epoch={saved[-1]}.pt" in log and "Restored all variables" in log
    assert f"Epoch[{saved[-1] + 1}] Complete" in log and "Epoch[1] Complete" not in log  # continued, not restarted
    assert (ckpt / f"checkpoint_epoch={saved[-1] + 2}.pt").exists() and (run / "models" / "model.pt").exists()


def test_ddp_two_processes_gloo(tmp_path):
    data = make_demo_dataset(tmp_path / "data", 2, n_train=8, n_valid=4, n_test=2, size=32)
    run = tmp_path / "run"
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--nproc_per_node", "2", "-m", "monai.bundle", "run", "--config_file",
           configs("train", "multi_gpu_train"), *common(data, run, 2, 32), "--max_epochs", "1"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (run / "checkpoints" / "checkpoint_epoch=1.pt").exists()
    assert (run / "models" / "model.pt").exists()
    writers = {p.name.split(".")[-2] for p in run.glob("events.out.tfevents.*")}  # the pid of each writer
    assert len(writers) == 1, "only rank 0 writes TensorBoard logs"
    import torch

    state = torch.load(run / "models" / "model.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in state["network"])  # the unwrapped network, loadable anywhere
    assert state["scorer"]["threshold"] is not None


def test_validation_without_anomalies_uses_task_loss(tmp_path):
    data = make_demo_dataset(tmp_path / "data", 2, n_train=4, n_valid=1, n_test=2, size=32)  # valid: one normal
    assert not list((data / "valid").glob("Ungood"))
    run = tmp_path / "run"
    out = bundle("run", "--config_file", str(CONFIGS / "train.json"), *common(data, run, 2, 32),
                 "--max_epochs", "2", "--val_interval", "1")
    log = out.stdout + out.stderr
    assert "Key metric: val_neg_task_loss best value" in log
    assert list((run / "checkpoints").glob("best_network*.pt")) and (run / "models" / "model.pt").exists()
