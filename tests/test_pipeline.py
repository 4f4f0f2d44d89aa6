"""The transforms inside ordinary MONAI pipelines, on real PNG and NIfTI files written here."""

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import CacheDataset, DataLoader
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, RandFlipd, ScaleIntensityd
from PIL import Image

from monai_mtlmad.data import head_phantoms
from monai_mtlmad.engines import multitask_train_step
from monai_mtlmad.losses import MultiTaskLoss
from monai_mtlmad.networks import MTLMoENet
from monai_mtlmad.tasks import create_tasks
from monai_mtlmad.transforms import (
    PseudoLabeld,
    RandInpaintMaskd,
    RandJigsawd,
    RandOrientationd,
    RandPseudoAnomalyd,
)


@pytest.fixture
def png_files(tmp_path):
    files = []
    for i, img in enumerate(head_phantoms(4, (64, 64), seed=5)):
        path = tmp_path / f"slice_{i}.png"
        Image.fromarray((img[0] * 255).astype(np.uint8)).save(path)
        files.append({"image": str(path)})
    return files


@pytest.fixture
def nifti_files(tmp_path):
    files = []
    affine = np.diag([1.5, 1.0, 2.0, 1.0])
    for i, vol in enumerate(head_phantoms(2, (32, 32, 32), seed=6)):
        path = tmp_path / f"vol_{i}.nii.gz"
        nib.save(nib.Nifti1Image((vol[0] * 1000).astype(np.int16), affine), path)
        files.append({"image": str(path)})
    return files


def load(keys=("image",)):
    return [LoadImaged(keys), EnsureChannelFirstd(keys), ScaleIntensityd(keys)]


def test_png_pipeline_with_every_transform(png_files):
    pipeline = Compose(
        load()
        + [
            PseudoLabeld("image"),
            RandPseudoAnomalyd("image", prob=1.0),
            RandInpaintMaskd("image", patch_size=8),
            RandJigsawd("image", num_permutations=10),
            RandOrientationd("image"),
        ]
    )
    pipeline.set_random_state(0)
    out = pipeline(png_files[0])
    assert out["image"].shape == (1, 64, 64)
    assert out["image"].meta["filename_or_obj"].endswith("slice_0.png")  # metadata survives the task views
    assert out["image_pseudo_label"].shape == (1, 64, 64) and out["image_pseudo_label"].dtype == torch.int64
    assert out["image_anomaly_mask"].max() > 0.5
    assert out["image_inpaint_mask"].sum() > 0
    assert int(out["image_jigsaw_perm"]) in range(10) and int(out["image_pose"]) in range(4)
    pipeline.set_random_state(0)
    again = pipeline(png_files[0])
    torch.testing.assert_close(out["image"], again["image"])


def test_nifti_3d_pipeline_keeps_affine(nifti_files):
    pipeline = Compose(load() + [PseudoLabeld("image"), RandInpaintMaskd("image", patch_size=4), RandOrientationd("image")])
    out = pipeline(nifti_files[0])
    assert out["image"].shape == (1, 32, 32, 32)
    np.testing.assert_allclose(np.diag(out["image"].affine.numpy())[:3], [1.5, 1.0, 2.0])
    assert 0 <= int(out["image_pose"]) < 24
    assert set(torch.unique(out["image_pseudo_label"]).tolist()) <= {0, 1, 2}


def test_cached_pseudo_labels_feed_a_real_training_step(png_files):
    """Deterministic labels cached by CacheDataset, random flips after them, one joint step on the batch."""
    transform = Compose(load() + [PseudoLabeld("image"), RandFlipd(["image", "image_pseudo_label"], prob=0.5)])
    ds = CacheDataset(png_files, transform, progress=False)
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["image"].shape == (4, 1, 64, 64) and batch["image_pseudo_label"].shape == (4, 1, 64, 64)
    tasks = create_tasks(["inpainting", "pseudo_label"], 2)
    net = MTLMoENet(2, 1, {t.name: t.head for t in tasks}, channels=(8, 16, 32), strides=(2, 2, 2))
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    parts = multitask_train_step(
        net, tasks, MultiTaskLoss([t.name for t in tasks]), opt, batch["image"].as_tensor(), batch=batch
    )
    assert np.isfinite(parts["total"])
    # the task used the cached labels, not its own recomputation: a wrong shape is reported clearly
    bad = dict(batch, image_pseudo_label=batch["image_pseudo_label"][:, :, :32])
    with pytest.raises(ValueError, match="image_pseudo_label"):
        tasks[1].training_views(batch["image"], batch=bad)
