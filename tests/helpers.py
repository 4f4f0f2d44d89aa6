"""Shared by the tests: running the MONAI Bundle as a user does (`python -m monai.bundle ...` in a subprocess),
and small learners trained on phantoms and saved as the bundle saves them."""

import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "bundle" / "configs"


def bundle(*args, timeout=600, check=True):
    cmd = [sys.executable, "-W", "ignore", "-m", "monai.bundle", *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def configs(*names):
    return str([str(CONFIGS / f"{n}.json") for n in names])


def infer(data, out, model, *extra, check=True):
    """inference.json with only the model file and the inputs (everything else comes from the model file)."""
    return bundle("run", "--config_file", str(CONFIGS / "inference.json"), "--bundle_root", str(ROOT / "bundle"),
                  "--dataset_dir", str(data), "--output_dir", str(out), "--model_path", str(model), *extra, check=check)


def train_model(path, dims, preset, steps, seed=0):
    """A small learner trained on phantoms and saved as the bundle saves it (self-describing model file)."""
    from monai_mtlmad.data import head_phantoms
    from monai_mtlmad.engines import fit_learner
    from monai_mtlmad.networks import MTLMoENet
    from monai_mtlmad.scoring import AnomalyScorer
    from monai_mtlmad.tasks import DEFAULT_TASKS, create_tasks

    torch.manual_seed(seed)
    tasks = create_tasks(DEFAULT_TASKS, dims)
    net = MTLMoENet(dims, 1, {t.name: t.head for t in tasks}, channels=(8, 16, 32, 32), strides=(2, 2, 2, 2))
    images = torch.from_numpy(head_phantoms(16, (32,) * dims, seed=1))
    fit_learner(net, tasks, images, steps=steps, batch_size=4 if dims == 2 else 2)
    # equal map weights: the output tests check where a blatant lesion lands in the written map, and a learner this
    # small only finds it in the mixture (the selected map follows subtle synthetic lesions: NOTES_session9)
    # trained on whole phantom cubes, so scored on whole volumes (the default; said here since the crop to the body
    # would magnify the head past anything this learner saw)
    preprocessing = {"preset": preset, "spatial_size": 32, **({"crop_to_body": False} if dims == 3 else {})}
    # fpr 0.2: 8 calibration normals support a conformal threshold down to 1 / 9 (0.1 would need 9)
    scorer = AnomalyScorer(net, tasks, fpr=0.2, map_weights="equal", preprocessing=preprocessing)
    scorer.fit(torch.from_numpy(head_phantoms(8, (32,) * dims, seed=2)))
    scorer.save(path)
    return scorer


def write_dicom_slices(folder, volume, spacing=(1.0, 1.0, 2.0), skip=(), series_uid="1.2.826.0.1.3680043.9.7"):
    """A DICOM series as scanners write it: one file per slice with its position, orientation and UIDs.
    ``volume`` is ``(x, y, z)``; slices listed in ``skip`` are left out (a series with missing slices)."""
    import itk
    import numpy as np

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = (np.asarray(volume) * 1000).astype(np.int16)
    for z in range(data.shape[2]):
        if z in skip:
            continue
        image = itk.image_from_array(np.ascontiguousarray(data[:, :, z].T))  # (rows = y, columns = x)
        image.SetSpacing([spacing[0], spacing[1]])
        tags = image.GetMetaDataDictionary()
        tags["0020|0032"] = f"0\\0\\{z * spacing[2]}"
        tags["0020|0037"] = "1\\0\\0\\0\\1\\0"
        tags["0028|0030"] = f"{spacing[1]}\\{spacing[0]}"
        tags["0020|000e"] = series_uid
        tags["0020|000d"] = series_uid + ".1"
        tags["0020|0013"] = str(z + 1)
        tags["0008|0018"] = f"{series_uid}.2.{z + 1}"
        io = itk.GDCMImageIO.New()
        io.KeepOriginalUIDOn()
        itk.imwrite(image, str(folder / f"slice{z:03d}.dcm"), imageio=io)
    return folder
