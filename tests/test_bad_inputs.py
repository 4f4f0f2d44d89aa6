"""Bad inputs through inference, evaluation and training as a user runs them (the bundle): each gets a clear
outcome naming its file, a recorded skip with every other input scored, or, in training, one error that lists
every unusable image; nothing written before is lost. The kinds and their outcomes are the tables below."""

import csv
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from monai_mtlmad.data import head_phantoms, make_demo_dataset

from helpers import CONFIGS, ROOT, bundle, infer, write_dicom_slices


def picture(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path)


def phantom_8bit(seed, shape=(32, 32)):
    return (head_phantoms(1, shape, seed=seed)[0, 0] * 255).round().astype(np.uint8)


def valid_png_bytes(seed):
    import io

    buffer = io.BytesIO()
    Image.fromarray(phantom_8bit(seed)).save(buffer, format="PNG")
    return buffer.getvalue()


# 2D inputs for a 2D model: file name -> (how it is made, expected outcome: "scored" or a piece of the reason)
PICTURES = {
    "empty.png": (lambda p: p.write_bytes(b""), "cannot identify image file"),
    "truncated.png": (lambda p: p.write_bytes(valid_png_bytes(1)[:200]), "truncated.png"),
    "text.png": (lambda p: p.write_text("not a picture"), "cannot identify image file"),
    "mask.png": (lambda p: picture(p, (phantom_8bit(2) > 100).astype(np.uint8) * 255), "only two values"),
    "black.png": (lambda p: picture(p, np.zeros((32, 32), np.uint8)), "is constant (every value 0)"),
    "grey.png": (lambda p: picture(p, np.full((32, 32), 90, np.uint8)), "is constant (every value 90)"),
    "sixteen_bit.png": (lambda p: picture(p, phantom_8bit(3).astype(np.uint16) * 257), "outside the range"),
    "tiny.png": (lambda p: picture(p, phantom_8bit(4)[:3, :3]), "too small"),
    "strip.png": (lambda p: picture(p, phantom_8bit(14, (64, 64))[:1]), "too small"),
    "inf.tif": (lambda p: picture(p, np.where(phantom_8bit(15) > 0, np.inf, 1).astype(np.float32), "F"), "infinite"),
    "nan.tif": (lambda p: picture(p, np.where(phantom_8bit(5) > 0, np.nan, 0).astype(np.float32), "F"), "NaN"),
    "volume.nii.gz": (lambda p: nib.save(nib.Nifti1Image(head_phantoms(1, (16, 16, 16))[0, 0], np.eye(4)), p),
                      "is a 3D volume"),
    # accepted: converted or read as they are
    "grey_alpha.png": (lambda p: picture(p, np.stack([phantom_8bit(6), np.full((32, 32), 255, np.uint8)], -1), "LA"),
                       "scored"),
    "rgba.png": (lambda p: picture(p, np.stack([phantom_8bit(7)] * 3 + [np.full((32, 32), 255, np.uint8)], -1)),
                 "scored"),
    "colour.png": (lambda p: picture(p, np.stack([phantom_8bit(8), phantom_8bit(9), phantom_8bit(10)], -1)), "scored"),
    "photo.jpg": (lambda p: picture(p, phantom_8bit(11)), "scored"),
    "UPPER.PNG": (lambda p: picture(p, phantom_8bit(12)), "scored"),
    "wide non-square ü.png": (lambda p: picture(p, phantom_8bit(13, (24, 40))), "scored"),
    "anomaly_mask/mask_folder.png": (lambda p: picture(p, np.zeros((32, 32), np.uint8)), "left out"),
}

# 3D inputs for a 3D model
def nifti(p, array, affine=None):
    nib.save(nib.Nifti1Image(np.asarray(array, np.float32), np.eye(4) if affine is None else affine), p)


def truncated_nifti(p):
    nifti(p, head_phantoms(1, (16, 16, 16), seed=1)[0, 0])
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])


def with_value(array, where, value):
    array = array.copy()
    array[where] = value
    return array


VOLUME = head_phantoms(1, (20, 20, 12), seed=3)[0, 0]
VOLUMES = {
    "truncated.nii.gz": (truncated_nifti, "Compressed file ended"),
    "empty.nii.gz": (lambda p: p.write_bytes(b""), "empty.nii.gz"),
    "nan.nii.gz": (lambda p: nifti(p, with_value(VOLUME, (slice(None), slice(None), 5), np.nan)), "NaN"),
    "inf.nii.gz": (lambda p: nifti(p, with_value(VOLUME, (3, 3, 3), np.inf)), "NaN or infinite"),
    "series4d.nii.gz": (lambda p: nifti(p, np.stack([VOLUME] * 3, -1)), "4D series"),
    "slice2d.nii.gz": (lambda p: nifti(p, VOLUME[:, :, 0]), "is a 2D image"),
    "one_slice.nii.gz": (lambda p: nifti(p, VOLUME[:, :, :1]), "too small"),
    "constant.nii.gz": (lambda p: nifti(p, np.full((20, 20, 12), 7.0)), "is constant"),
    "segmentation.nii.gz": (lambda p: nifti(p, (VOLUME > 0.3).astype(np.float32)), "only two values"),
    "dicom_gap": (lambda p: write_dicom_slices(p, VOLUME, skip=(5,)), "missing slices"),
    "dicom_foreign_file": (lambda p: (write_dicom_slices(p, VOLUME), (p / "slice999.dcm").write_bytes(b"junk")),
                           "not slices of its series"),
    "dicom_duplicate": (lambda p: (write_dicom_slices(p, VOLUME), shutil.copy(p / "slice003.dcm", p / "slice003b.dcm")),
                        "duplicate positions"),
    "dicom_junk": (lambda p: (p.mkdir(), *[(p / f"s{i}.dcm").write_bytes(b"junk") for i in range(3)]), "dicom_junk"),
    # accepted
    "dicom_complete": (lambda p: write_dicom_slices(p, VOLUME, series_uid="1.2.826.0.1.3680043.9.8"), "scored"),
    "lps.nii.gz": (lambda p: nifti(p, VOLUME[::-1, ::-1], np.diag([-1.0, -1.0, 1.0, 1.0])), "scored"),
    "scan.nrrd": (lambda p: __import__("itk").imwrite(__import__("itk").image_from_array(
        np.ascontiguousarray(VOLUME.T)), str(p)), "scored"),
}


def run_inference(kinds, model, tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for name, (make, _) in kinds.items():
        (inputs / name).parent.mkdir(parents=True, exist_ok=True)
        make(inputs / name)
    out = infer(inputs, tmp_path / "out", model)
    rows = {str(Path(r["file"]).relative_to(inputs)): r for r in csv.DictReader(open(tmp_path / "out" / "scores.csv"))}
    return rows, out.stdout + out.stderr


def check_outcomes(kinds, rows, log):
    for name, (_, outcome) in kinds.items():
        if outcome == "left out":
            assert name not in rows
        elif outcome == "scored":
            assert rows[name]["anomalous"] in ("yes", "no") and np.isfinite(float(rows[name]["score"])), name
        else:
            assert rows[name]["anomalous"] == "skipped", name
            assert outcome in rows[name]["note"] and name.split("/")[-1] in rows[name]["note"], (name, rows[name]["note"])
            assert name.split("/")[-1] in log  # also in the log
    assert len(rows) == sum(o != "left out" for _, o in kinds.values())
    assert f"skipped {sum(o not in ('scored', 'left out') for _, o in kinds.values())}" in log


def test_inference_skips_and_records_every_bad_picture(model_2d, tmp_path):
    rows, log = run_inference(PICTURES, model_2d[0], tmp_path)
    check_outcomes(PICTURES, rows, log)
    # the accepted ones got their maps, at their own size
    assert np.load(tmp_path / "out" / "wide non-square ü_map.npy").shape == (24, 40)
    assert not list((tmp_path / "out").glob("**/mask*"))


def test_inference_skips_and_records_every_bad_volume(model_3d, tmp_path):
    rows, log = run_inference(VOLUMES, model_3d[0], tmp_path)
    check_outcomes(VOLUMES, rows, log)
    assert nib.load(tmp_path / "out" / "dicom_complete_map.nii.gz").shape == (20, 20, 12)


def bmad_tree(root):
    data = make_demo_dataset(root, 2, n_train=6, n_valid=4, n_test=4, size=32)
    return data


def test_evaluation_refuses_metrics_over_skipped_images_unless_told(tmp_path, model_2d):
    data = bmad_tree(tmp_path / "data")
    run = tmp_path / "run"
    (run / "models").mkdir(parents=True)
    shutil.copy(model_2d[0], run / "models" / "model.pt")
    args = ["run", "--config_file", str(CONFIGS / "evaluate.json"), "--bundle_root", str(ROOT / "bundle"),
            "--dataset_dir", str(data), "--output_dir", str(run), "--num_workers", "0"]
    bundle(*args)  # a clean set first: metrics.json written
    first = (run / "metrics.json").read_text()
    # then three kinds of bad test inputs: an unreadable image, a mask of the wrong size, an image that is a mask
    (data / "test" / "good" / "img" / "normal_0000.png").write_bytes(b"")
    picture(data / "test" / "Ungood" / "anomaly_mask" / "lesion_0000.png", np.zeros((8, 8), np.uint8))
    shutil.copy(data / "test" / "Ungood" / "anomaly_mask" / "lesion_0001.png", data / "test" / "good" / "img" / "copied_mask.png")
    refused = bundle(*args, check=False)
    log = refused.stdout + refused.stderr
    assert refused.returncode != 0 and "3 of 5 images could not be scored" in log
    assert not (run / "metrics.json").exists()  # no report over a partial set...
    kept = list((run / "previous").glob("*/metrics.json"))
    assert len(kept) == 1 and kept[0].read_text() == first  # ...and the earlier one is kept, not overwritten
    rows = {Path(r["file"]).name: r for r in csv.DictReader(open(run / "scores.csv"))}
    assert "mask shape (8, 8) differs" in rows["lesion_0000.png"]["note"]
    assert "only two values" in rows["copied_mask.png"]["note"] and rows["normal_0001.png"]["anomalous"] != "skipped"
    bundle(*args, "--allow_skipped", "true")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["skipped"]["count"] == 3 and metrics["n_images"] == 2


def failed_training(data, run, image_size):
    """train.json on ``data`` into ``run``, expected to fail: its log."""
    out = bundle("run", "--config_file", str(CONFIGS / "train.json"), "--bundle_root", str(ROOT / "bundle"),
                 "--dataset_dir", str(data), "--output_dir", str(run), "--image_size", str(image_size),
                 "--num_workers", "0", "--max_epochs", "1", check=False)
    assert out.returncode != 0
    return out.stdout + out.stderr


def test_training_lists_every_unusable_image_before_the_first_epoch(tmp_path):
    data = bmad_tree(tmp_path / "data")
    (data / "train" / "good" / "img" / "normal_0001.png").write_bytes(b"\x89PNG broken")
    picture(data / "train" / "good" / "img" / "zeros.png", np.zeros((32, 32), np.uint8))
    nifti(data / "valid" / "good" / "img" / "volume.nii.gz", head_phantoms(1, (16, 16, 16))[0, 0])
    run = tmp_path / "run"
    log = failed_training(data, run, 32)
    assert "2 of" in log and "training images cannot be used" in log and "validation images cannot be used" in log
    for name in ("normal_0001.png", "zeros.png: is constant", "volume.nii.gz: is a 3D volume"):
        assert name in log, name
    assert "Epoch[1]" not in log and not (run / "models").exists()  # failed before training, not after an epoch


def test_training_refuses_an_image_size_the_network_cannot_take_before_reading_images(tmp_path):
    data = bmad_tree(tmp_path / "data")
    (data / "train" / "good" / "img" / "normal_0001.png").write_bytes(b"\x89PNG broken")
    run = tmp_path / "run"
    log = failed_training(data, run, 40)
    assert "image_size 40: every side must be a multiple of 16" in log and "Nearest: 32 or 48" in log
    # refused before any image was read: the broken picture is not reported, nothing is written
    assert "normal_0001.png" not in log and not run.exists()


def test_clear_errors_when_there_is_nothing_to_score(tmp_path, model_2d):
    from monai_mtlmad.apps.bundle import input_datalist
    from monai_mtlmad.data import bmad_datalist

    missing = infer(tmp_path / "nowhere", tmp_path / "out", model_2d[0], check=False)
    assert missing.returncode != 0 and f"{tmp_path / 'nowhere'}: no such file or folder" in missing.stdout + missing.stderr
    (tmp_path / "only_masks" / "anomaly_mask").mkdir(parents=True)
    picture(tmp_path / "only_masks" / "anomaly_mask" / "m.png", np.zeros((32, 32), np.uint8))
    with pytest.raises(ValueError, match="only_masks: the folder holds no image"):
        input_datalist(tmp_path / "only_masks")
    data = bmad_tree(tmp_path / "data")
    (data / "test" / "Ungood" / "anomaly_mask" / "lesion_0001.png").unlink()
    with pytest.raises(ValueError, match="lesion_0001.png: anomalous image without a mask"):
        bmad_datalist(data, "test", check=False)  # what evaluate.json reads: it fails at once, naming the image
