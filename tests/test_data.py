"""Data: BMAD layouts, clear errors, user folders, preprocessing, 3D affines, the demo dataset."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import LoadImage, SaveImage
from PIL import Image

from monai_mtlmad.data import (
    DEMO_AFFINE,
    bmad_datalist,
    bmad_info,
    folder_datalist,
    make_dataset,
    make_demo_dataset,
    make_loader,
    preprocessing,
)


def png(path: Path, shape=(8, 8), value=128, rgb=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full(shape + ((3,) if rgb else ()), value, np.uint8)
    Image.fromarray(arr).save(path)
    return path


def bmad_tree(root: Path, img_dir=True, mask_dir="anomaly_mask", resc=False, masks=True):
    """A miniature BMAD folder: 3 train normals, valid and test with 2 normal + 2 anomalous each."""
    sub = ["img"] if img_dir else []
    for i in range(3):
        png(root.joinpath("Train" if resc else "train", "good", *sub, f"n{i}.png"))
    for split in ("valid", "test"):
        base = {"valid": ("Val", "val"), "test": ("Test", "test")}[split] if resc else (split,)
        for i in range(2):
            png(root.joinpath(*base, "good", *sub, f"n{i}.png"))
            png(root.joinpath(*base, "Ungood", *sub, f"a{i}.png"), value=200)
            if masks and resc:
                png(root.joinpath(base[0], f"{base[1]}_label", "Ungood", f"a{i}.png"), value=255)
            elif masks:
                png(root.joinpath(*base, "Ungood", mask_dir, f"a{i}.png"), value=255)
    return root


@pytest.mark.parametrize(
    "kwargs", [{}, {"img_dir": False}, {"mask_dir": "label"}, {"resc": True}, {"masks": False}, {"resc": True, "img_dir": False}]
)
def test_bmad_layouts(tmp_path, kwargs):
    root = bmad_tree(tmp_path / "Data", **kwargs)
    train = bmad_datalist(root, "train")
    assert len(train) == 3 and all(d["label"] == 0 and d["mask"] is None for d in train)
    for split in ("valid", "test"):
        items = bmad_datalist(root, split)
        assert [d["label"] for d in items] == [0, 0, 1, 1]
        for d in items:
            if d["label"] == 1 and kwargs.get("masks", True):
                assert Path(d["mask"]).name == Path(d["image"]).name and Path(d["mask"]).exists()
                assert Path(d["mask"]).parent != Path(d["image"]).parent
            else:
                assert d["mask"] is None


def test_bmad_dataset_defaults():
    assert bmad_info(None, "/data/BraTS2021").channels == 1
    assert bmad_info("camelyon16").channels == 3 and not bmad_info("rsna").has_masks
    assert bmad_info(None, "/data/mystudy") is None
    with pytest.raises(ValueError, match="unknown BMAD dataset"):
        bmad_info("mnist")


def test_bmad_errors_name_the_problem(tmp_path):
    root = bmad_tree(tmp_path / "BraTS2021")
    with pytest.raises(ValueError, match="split must be"):
        bmad_datalist(root, "holdout")
    with pytest.raises(FileNotFoundError, match="no such dataset folder"):
        bmad_datalist(tmp_path / "nowhere", "train")
    only_train = bmad_tree(tmp_path / "X")
    for split in ("valid", "test"):
        for p in sorted(only_train.joinpath(split).rglob("*"), reverse=True):
            p.unlink() if p.is_file() else p.rmdir()
        only_train.joinpath(split).rmdir()
    with pytest.raises(FileNotFoundError, match="no 'test' split"):
        bmad_datalist(only_train, "test")
    # an anomalous image without its mask
    (root / "test" / "Ungood" / "anomaly_mask" / "a1.png").unlink()
    with pytest.raises(ValueError, match="a1.png: anomalous image without a mask"):
        bmad_datalist(root, "test")
    # a mask of another shape
    png(root / "valid" / "Ungood" / "anomaly_mask" / "a0.png", shape=(6, 8), value=255)
    with pytest.raises(ValueError, match="a0.png: image and mask differ in shape"):
        bmad_datalist(root, "valid")
    # an empty folder
    empty = tmp_path / "E"
    (empty / "train" / "good" / "img").mkdir(parents=True)
    with pytest.raises(ValueError, match="img: the folder holds no image"):
        bmad_datalist(empty, "train")
    # an unreadable file
    bad = bmad_tree(tmp_path / "B")
    (bad / "train" / "good" / "img" / "n1.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="n1.png: cannot read this image"):
        bmad_datalist(bad, "train")
    # BraTS has pixel masks: an Ungood folder without a mask folder is an error, not silently mask-less
    no_masks = bmad_tree(tmp_path / "BraTS2021_nomask" / "BraTS2021", masks=False)
    with pytest.raises(ValueError, match="has pixel masks"):
        bmad_datalist(no_masks, "test")


def test_folder_datalist_reads_png_nifti_nrrd(tmp_path):
    import itk

    studies, masks = tmp_path / "studies", tmp_path / "masks"
    nib.save(nib.Nifti1Image(np.random.rand(10, 12, 8).astype(np.float32), np.eye(4)), studies.mkdir() or studies / "a.nii.gz")
    itk.imwrite(itk.image_from_array(np.random.rand(8, 12, 10).astype(np.float32)), str(studies / "b.nrrd"))
    png(studies / "c.png", shape=(12, 10))
    masks.mkdir()
    nib.save(nib.Nifti1Image(np.zeros((10, 12, 8), np.uint8), np.eye(4)), masks / "a.nii.gz")
    items = folder_datalist(studies, masks)
    assert [Path(d["image"]).name for d in items] == ["a.nii.gz", "b.nrrd", "c.png"]
    assert [d["label"] for d in items] == [1, 0, 0] and items[0]["mask"].endswith("a.nii.gz")
    shapes = [tuple(LoadImage(image_only=True)(d["image"]).shape) for d in items]
    assert shapes == [(10, 12, 8), (10, 12, 8), (10, 12)]
    assert all(d["label"] == 0 for d in folder_datalist([studies], label=0))
    with pytest.raises(FileNotFoundError, match="no such folder"):
        folder_datalist(tmp_path / "missing")


def test_3d_map_written_back_has_input_affine_and_shape(tmp_path):
    affine = np.array([[0.8, 0.1, 0, -20], [0, 1.1, 0, 5], [0, 0, 2.5, 30], [0, 0, 0, 1]])
    vol = np.random.default_rng(0).random((40, 36, 20)).astype(np.float32)
    src = tmp_path / "study.nii.gz"
    nib.save(nib.Nifti1Image(vol, affine), src)
    det, _ = preprocessing("mri", 32, spatial_dims=3, with_mask=False)
    data = det({"image": str(src)})
    assert data["image"].shape == (1, 32, 32, 32)
    # an anomaly map computed at the training size, carrying the image's metadata and transform history
    amap = MetaTensor(torch.rand(1, 32, 32, 32), meta=data["image"].meta, applied_operations=data["image"].applied_operations)
    restored = det.inverse({"image": amap})["image"]
    assert restored.shape == (1, 40, 36, 20)
    SaveImage(output_dir=tmp_path / "maps", output_postfix="anomaly", separate_folder=False, resample=False)(restored)
    written = nib.load(next((tmp_path / "maps").glob("*.nii.gz")))
    assert written.shape == (40, 36, 20)
    np.testing.assert_allclose(written.affine, affine, atol=1e-5)


def test_preprocessing_presets(tmp_path):
    rgb_gray = png(tmp_path / "g.png", shape=(16, 16), value=51, rgb=True)
    det, rand = preprocessing("png", 16, with_mask=False)
    out = det({"image": str(rgb_gray)})
    assert out["image"].shape == (1, 16, 16) and float(out["image"].max()) == pytest.approx(0.2)
    det3, _ = preprocessing("rgb", 16, channels=3, with_mask=False)
    assert det3({"image": str(rgb_gray)})["image"].shape == (3, 16, 16)
    ct = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(np.array([-1000, -160, 40, 240, 1000], np.float32).reshape(5, 1, 1).repeat(4, 1).repeat(4, 2), np.eye(4)), ct)
    ct_out = preprocessing("ct", (5, 4, 4), spatial_dims=3, with_mask=False)[0]({"image": str(ct)})["image"]
    np.testing.assert_allclose(ct_out[0, :, 0, 0].numpy(), [0, 0, 0.5, 1, 1], atol=1e-5)
    with pytest.raises(ValueError, match="preset"):
        preprocessing("pet")
    # a mask with a different shape than its image fails at load too, naming the mask
    png(tmp_path / "m.png", shape=(8, 8), value=255)
    det_m, _ = preprocessing("png", 16)
    with pytest.raises(RuntimeError) as err:  # MONAI's Compose wraps it; our message is the cause
        det_m({"image": str(rgb_gray), "mask": str(tmp_path / "m.png")})
    assert "m.png: mask shape (8, 8) differs from image" in str(err.value.__cause__)


def test_demo_dataset_2d_and_3d_cached_loading(tmp_path):
    root = make_demo_dataset(tmp_path / "demo2d", 2, n_train=6, n_valid=4, n_test=4, size=64, seed=3)
    again = make_demo_dataset(tmp_path / "again", 2, n_train=6, n_valid=4, n_test=4, size=64, seed=3)
    a = (root / "test" / "Ungood" / "img" / "lesion_0000.png").read_bytes()
    assert a == (again / "test" / "Ungood" / "img" / "lesion_0000.png").read_bytes()  # deterministic
    assert "NOT clinical data" in (root / "README.txt").read_text()
    items = bmad_datalist(root, "test")
    assert [d["label"] for d in items] == [0, 0, 1, 1]
    det, rand = preprocessing("png", 64)
    ds = make_dataset(items, det, rand, cache="memory")
    batch = next(iter(make_loader(ds, batch_size=4, num_workers=0)))
    assert batch["image"].shape == (4, 1, 64, 64) and batch["mask"].shape == (4, 1, 64, 64)
    assert float(batch["mask"][:2].sum()) == 0 and float(batch["mask"][2:].sum()) > 0
    # MONAI reads back exactly what was generated, in the same orientation, for image and mask alike
    from monai_mtlmad.data import head_phantoms, insert_lesions

    sick, brain = head_phantoms(2, (64, 64), seed=3 + 12, return_brain=True)
    sick, lesion = insert_lesions(sick, brain, seed=3 + 1)
    img = LoadImage(image_only=True)(items[2]["image"]).numpy() / 255
    msk = LoadImage(image_only=True)(items[2]["mask"]).numpy() > 0
    np.testing.assert_allclose(img, sick[0, 0], atol=0.5 / 255 + 1e-6)
    np.testing.assert_array_equal(msk, lesion[0, 0])
    root3 = make_demo_dataset(tmp_path / "demo3d", 3, n_train=2, n_valid=2, n_test=2, size=24)
    vol = nib.load(next((root3 / "test" / "Ungood" / "img").glob("*.nii.gz")))
    np.testing.assert_allclose(vol.affine, DEMO_AFFINE)
    det3, _ = preprocessing("mri", 24, spatial_dims=3)
    out = det3(bmad_datalist(root3, "test")[-1])
    assert out["image"].shape == (1, 24, 24, 24) and float(out["mask"].sum()) > 0
    assert float((out["image"] * out["mask"]).sum()) > 0


def test_dicom_series_folder(tmp_path):
    import itk

    series = tmp_path / "studies" / "patient1"
    series.mkdir(parents=True)
    arr = (np.random.default_rng(0).random((5, 16, 12)) * 1000).astype(np.int16)  # (z, y, x)
    img = itk.image_from_array(arr)
    img.SetSpacing([0.8, 0.9, 2.0])
    writer = itk.ImageSeriesWriter[itk.Image[itk.SS, 3], itk.Image[itk.SS, 2]].New(
        Input=img, FileNames=[str(series / f"slice{i:03d}.dcm") for i in range(5)], ImageIO=itk.GDCMImageIO.New()
    )
    writer.Update()
    items = folder_datalist(tmp_path / "studies")
    assert items == [{"image": str(series), "label": 0, "mask": None}]  # the folder is one study
    det, _ = preprocessing("mri", 16, spatial_dims=3, with_mask=False)
    out = det(items[0])
    assert out["image"].shape == (1, 16, 16, 16)
    assert LoadImage(image_only=True)(str(series)).shape == (12, 16, 5)
