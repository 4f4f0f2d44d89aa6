"""Data: BMAD layouts, clear errors, user folders, preprocessing, 3D affines, the demo dataset."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage
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
    ramp = np.repeat(np.linspace(0, 51, 16).round().astype(np.uint8)[None, :, None], 16, 0).repeat(3, 2)
    rgb_gray = tmp_path / "g.png"  # grey levels 0..51 stored as RGB
    Image.fromarray(ramp).save(rgb_gray)
    det, rand = preprocessing("png", 16, with_mask=False)
    out = det({"image": str(rgb_gray)})
    assert out["image"].shape == (1, 16, 16) and float(out["image"].max()) == pytest.approx(0.2)
    det3, _ = preprocessing("rgb", 16, channels=3, with_mask=False)
    assert det3({"image": str(rgb_gray)})["image"].shape == (3, 16, 16)
    ct = tmp_path / "ct.nii.gz"
    hu = np.array([-1000, -160, 40, 240, 1000], np.float32).repeat(2).reshape(10, 1, 1).repeat(8, 1).repeat(8, 2)
    nib.save(nib.Nifti1Image(hu, np.eye(4)), ct)
    # the HU window alone (a ramp has no body to crop to)
    ct_out = preprocessing("ct", (10, 8, 8), spatial_dims=3, with_mask=False, crop_to_body=False)[0]({"image": str(ct)})["image"]
    np.testing.assert_allclose(ct_out[0, ::2, 0, 0].numpy(), [0, 0, 0.5, 1, 1], atol=1e-5)
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
    # the pictures hold what was generated (rows = first axis), for image and mask alike; MONAI's reader puts x
    # (the columns) first, so it returns their transpose
    from PIL import Image

    from monai_mtlmad.data import head_phantoms, insert_lesions

    sick, brain = head_phantoms(2, (64, 64), seed=3 + 12, return_brain=True)
    sick, lesion = insert_lesions(sick, brain, seed=3 + 1)
    np.testing.assert_allclose(np.asarray(Image.open(items[2]["image"])) / 255, sick[0, 0], atol=0.5 / 255 + 1e-6)
    np.testing.assert_array_equal(np.asarray(Image.open(items[2]["mask"])) > 0, lesion[0, 0])
    img = LoadImage(image_only=True)(items[2]["image"]).numpy() / 255
    np.testing.assert_allclose(img, sick[0, 0].T, atol=0.5 / 255 + 1e-6)
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


def sphere_volume(shape, spacing, radius_mm=9.0):
    """A ball of ``radius_mm`` around the centre of a volume with voxel ``spacing``: round in millimetres."""
    axes = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing)]
    grid = np.meshgrid(*axes, indexing="ij")
    return (np.sqrt(sum(g**2 for g in grid)) <= radius_mm).astype(np.float32)


def test_3d_canonical_pose_and_voxel_spacing(tmp_path):
    shape, spacing = (40, 30, 12), (0.5, 0.8, 2.0)  # anisotropic: 20 x 24 x 24 mm
    ball = sphere_volume(shape, spacing)
    ball[:20, :15, :6] += 0.5  # mark one octant so that flips show
    ras = np.diag([*spacing, 1.0])
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:2, 3] = (shape[0] - 1, shape[1] - 1)
    nib.save(nib.Nifti1Image(ball, ras), tmp_path / "ras.nii.gz")
    nib.save(nib.Nifti1Image(np.ascontiguousarray(ball[::-1, ::-1]), ras @ flip), tmp_path / "lps.nii.gz")
    det, _ = preprocessing("mri", 32, spatial_dims=3, with_mask=False)
    a, b = (det({"image": str(tmp_path / f"{n}.nii.gz")})["image"] for n in ("ras", "lps"))
    assert a.shape == b.shape == (1, 32, 32, 32)
    torch.testing.assert_close(a.as_tensor(), b.as_tensor())  # the same anatomy, however it was stored
    # by default the whole field of view fits at one isotropic spacing (24 mm / 32 voxels): the ball stays round
    np.testing.assert_allclose(a.pixdim.numpy(), [0.75] * 3, atol=1e-6)
    inside = (a[0] > 0.5).numpy()
    extents = [np.ptp(np.nonzero(inside)[d]) + 1 for d in range(3)]
    assert max(extents) - min(extents) <= 1, extents  # 18 mm / 0.75 mm = 24 voxels along every axis
    # cropped, the body's own box (the ball's 18 mm and a margin, not the 24 mm scan) fills the grid: finer
    # isotropic voxels, the same for both storages, the anatomy magnified in proportion and still round
    cropped, _ = preprocessing("mri", 32, spatial_dims=3, with_mask=False, crop_to_body=True)
    a, b = (cropped({"image": str(tmp_path / f"{n}.nii.gz")})["image"] for n in ("ras", "lps"))
    torch.testing.assert_close(a.as_tensor(), b.as_tensor())
    step = float(a.pixdim[0])
    assert step < 0.7 and np.allclose(a.pixdim.numpy(), step)
    inside = (a[0] > 0.5).numpy()
    magnified = [np.ptp(np.nonzero(inside)[d]) + 1 for d in range(3)]
    assert max(magnified) - min(magnified) <= 1, magnified
    np.testing.assert_allclose(magnified, np.asarray(extents) * 0.75 / step, atol=1.5)
    fixed, _ = preprocessing("mri", 32, spatial_dims=3, with_mask=False, spacing=1.0)
    c = fixed({"image": str(tmp_path / "lps.nii.gz")})["image"]
    assert c.shape == (1, 32, 32, 32) and np.allclose(c.pixdim.numpy(), 1.0)  # 32 mm centred field of view
    with pytest.raises(ValueError, match="3D volumes only"):
        preprocessing("png", 32, spacing=1.0)
    with pytest.raises(ValueError, match="3D volumes only"):
        preprocessing("png", 32, crop_to_body=True)


def test_3d_volumes_cropped_to_the_body_fill_the_grid_and_invert_onto_the_input(tmp_path):
    """A head small and off-centre in an oblique LPS scan: cropped to its box it fills the training grid, and a
    map computed there (here: the lesion mask as preprocessed) goes back onto the input's voxels, and what the crop
    cut away takes the map's lowest value (no frame around the body)."""
    import math

    from monai_mtlmad.data import InvertMap, head_phantoms

    shape, spacing = (72, 60, 40), (1.0, 1.2, 1.5)
    volume = np.zeros(shape, np.float32)
    volume[4:40, 28:56, 18:38] = head_phantoms(1, (36, 28, 20), seed=3)[0, 0]  # off-centre, 3 % of the scan
    lesion = np.zeros(shape, bool)
    lesion[18:24, 38:44, 25:30] = True
    volume[lesion] = 1.0
    angle = math.radians(8)
    affine = np.eye(4)
    affine[:3, :3] = np.array(
        [[math.cos(angle), -math.sin(angle), 0], [math.sin(angle), math.cos(angle), 0], [0, 0, 1]]) @ np.diag(spacing)
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])  # stored LPS: the first two axes reversed
    flip[:2, 3] = (shape[0] - 1, shape[1] - 1)
    nib.save(nib.Nifti1Image((volume[::-1, ::-1] * 1000).astype(np.int16), affine @ flip), tmp_path / "scan.nii.gz")
    nib.save(nib.Nifti1Image(lesion[::-1, ::-1].astype(np.uint8), affine @ flip), tmp_path / "lesion.nii.gz")
    item = {"image": str(tmp_path / "scan.nii.gz"), "mask": str(tmp_path / "lesion.nii.gz")}
    out = {}
    for crop in (False, True):
        det, _ = preprocessing("mri", 32, spatial_dims=3, crop_to_body=crop)
        d = det(dict(item))
        amap = d["mask"].as_tensor() - 1.0  # like an anomaly map: background at its lowest value (-1), lesion at 0
        back = InvertMap(det)(d["image"], amap)
        assert back.shape == (1, *shape) and np.allclose(back.affine.numpy(), affine @ flip)
        back = back[0].numpy()
        want = lesion[::-1, ::-1]
        # no frame: everything away from the lesion, inside the body's box or cut away with it, holds the lowest value
        np.testing.assert_allclose(back[~ndimage.binary_dilation(want, iterations=6)], -1.0, atol=1e-4)
        back = back > -0.5
        if crop:  # the box holds the whole head: the body touches no face of the grid
            body = d["image"][0].numpy() > 0.02
            assert body.any() and not any(np.take(body, i, axis=a).any() for a in range(3) for i in (0, -1))
        out[crop] = (d["image_foreground"].float().mean().item(), d["mask"].sum().item(), 2 * (back & want).sum() / (back.sum() + want.sum()))
    (fg_whole, lesion_whole, dice_whole), (fg_crop, lesion_crop, dice_crop) = out[False], out[True]
    assert fg_crop > 8 * fg_whole and fg_crop > 0.15, out  # the head fills the grid instead of 2 % of it
    assert lesion_crop > 8 * lesion_whole, out  # the lesion gets that many more voxels to be found in
    assert dice_crop > 0.95 and dice_whole > 0.8, out  # and both come back where the input holds the lesion


def test_cached_pseudo_labels_move_with_the_image(tmp_path):
    from monai.transforms import Compose

    from monai_mtlmad.data import head_phantoms
    from monai_mtlmad.transforms import PseudoLabel, PseudoLabeld

    image = head_phantoms(1, (64, 64), seed=5)[0, 0]
    Image.fromarray((image * 255).round().astype(np.uint8)).save(tmp_path / "a.png")
    det, rand = preprocessing("png", 64, with_mask=False)
    cached = Compose([det, PseudoLabeld("image")])({"image": str(tmp_path / "a.png")})
    affine = rand.transforms[0]
    affine.prob = 1.0  # always, and visibly: up to 8 pixels of shift on top of the usual small rotation
    affine.rand_affine.rand_affine_grid.translate_range = ((6, 8), (6, 8))
    affine.set_random_state(3)
    moved = rand(dict(cached))
    labels = moved["image_pseudo_label"].as_tensor()
    fresh = PseudoLabel()(moved["image"])  # the labels of the augmented image itself
    agree = float((labels == torch.as_tensor(fresh)).float().mean())
    stale = float((cached["image_pseudo_label"].as_tensor() == torch.as_tensor(fresh)).float().mean())
    assert agree > 0.95 and stale < agree - 0.05, (agree, stale)


def test_recursive_listing_finds_nested_series_and_leaves_masks_out(tmp_path):
    from monai_mtlmad.data.files import list_images, stem

    png(tmp_path / "a" / "x.png")
    png(tmp_path / "b" / "c" / "x.png")
    png(tmp_path / "b" / "anomaly_mask" / "x.png")
    png(tmp_path / "b" / "test_label" / "x.png")
    series = tmp_path / "b" / "1.2.840.10008.4"
    series.mkdir()
    (series / "s0.dcm").write_bytes(b"")
    found = list_images(tmp_path, recursive=True)
    assert found == [str(tmp_path / "a" / "x.png"), str(series), str(tmp_path / "b" / "c" / "x.png")]
    assert stem(series) == "1.2.840.10008.4" and stem("scan.v2.nii.gz") == "scan.v2"


@pytest.mark.parametrize("anatomy,dims", [("head", 2), ("chest", 2), ("chest", 3), ("head", 3)])
def test_harder_generated_sets(tmp_path, anatomy, dims):
    size = 64 if dims == 2 else 24
    root = make_demo_dataset(tmp_path / "hard", dims, n_train=8, n_valid=2, n_test=8, size=size, anatomy=anatomy, hard=True)
    again = make_demo_dataset(tmp_path / "again", dims, n_train=8, n_valid=2, n_test=8, size=size, anatomy=anatomy, hard=True)
    items = bmad_datalist(root, "test")
    assert [d["label"] for d in items] == [0] * 4 + [1] * 4
    assert f"anatomy={anatomy} hard=True" in (root / "README.txt").read_text()
    for d in items[4:]:
        assert Path(d["image"]).read_bytes() == Path(d["image"].replace(str(root), str(again))).read_bytes()
    det, _ = preprocessing("png" if dims == 2 else "mri", size, spatial_dims=dims)
    for d in items[4:]:
        out = det(d)
        assert float(out["mask"].sum()) > 0, d["mask"]  # every lesion survives writing and preprocessing
    if anatomy == "head" and dims == 2:  # slices at different levels: the amount of tissue varies much more
        from monai_mtlmad.data import head_phantoms

        def variation(**kwargs):
            area = head_phantoms(32, (48, 48), seed=1, return_brain=True, **kwargs)[1].reshape(32, -1).mean(1)
            return area.std() / area.mean()

        assert variation(size_range=(0.55, 1.0), scalp=True) > 2 * variation()


@pytest.mark.parametrize("dims", [2, 3])
def test_paired_sets_hold_each_lesioned_images_own_original_as_its_normal(tmp_path, dims):
    """paired=True: the normal half of the test split is the lesioned half before its lesions (same anatomy), read
    back from the written files; the lesioned half is the one an unpaired set has."""
    size = 64 if dims == 2 else 24
    kw = dict(n_train=2, n_valid=2, n_test=8, size=size, anatomy="head", hard=True)
    paired = make_demo_dataset(tmp_path / "paired", dims, paired=True, **kw)
    plain = make_demo_dataset(tmp_path / "plain", dims, **kw)
    load = LoadImage(image_only=True)
    items = bmad_datalist(paired, "test")
    assert [d["label"] for d in items] == [0] * 4 + [1] * 4 and "paired=True" in (paired / "README.txt").read_text()
    for normal, sick in zip(items[:4], items[4:]):
        assert Path(sick["image"]).read_bytes() == Path(sick["image"].replace(str(paired), str(plain))).read_bytes()
        twin, lesioned = np.asarray(load(normal["image"]), float), np.asarray(load(sick["image"]), float)
        other = np.asarray(load(normal["image"].replace(str(paired), str(plain))), float)  # an unpaired normal
        head = (twin > 0) | (lesioned > 0) | (other > 0)
        # the same head, voxel for voxel, except where the lesion, its edema or its mass effect reach (at most
        # about a third of the head here); an unpaired normal is another head and matches almost nowhere
        assert (twin == lesioned)[head].mean() > 0.6 and (other == lesioned)[head].mean() < 0.1, normal["image"]
        lesion = np.asarray(load(sick["mask"])) > 0
        assert np.abs(twin - lesioned)[lesion].mean() > 0  # without the lesion


@pytest.mark.parametrize("contrast", [1.0, 0.4])
def test_chest_and_head_lesions_change_only_their_region_by_their_contrast(contrast):
    from monai_mtlmad.data import (
        CHEST_LESION_KINDS, HEAD_LESION_KINDS, chest_phantoms, head_phantoms, insert_chest_lesions, insert_lesions,
    )

    clean, lungs = chest_phantoms(4, (96, 96), seed=5, return_lungs=True)
    full, masks = insert_chest_lesions(clean, lungs, seed=6)
    part, masks_part = insert_chest_lesions(clean, lungs, seed=6, contrast_range=(contrast, contrast))
    np.testing.assert_array_equal(masks, masks_part)  # the contrast does not move or resize the lesion
    for i, kind in enumerate(CHEST_LESION_KINDS):
        change = full[i] - clean[i]
        assert masks[i].any() and np.abs(change[masks[i]]).mean() > 0.02, kind  # (a nodule may sit on a vessel)
        assert np.abs(change[~masks[i]]).max() < 0.1, kind  # (ground glass fades out beyond its half-height mask)
        if kind != "pleural_mass":
            assert not (masks[i] & ~lungs[i]).any(), kind
        np.testing.assert_allclose(part[i] - clean[i], contrast * change, atol=2e-6)
    heads, brains = head_phantoms(4, (96, 96), seed=7, return_brain=True, size_range=(0.6, 1.0), scalp=True)
    sick, head_masks = insert_lesions(heads, brains, seed=8, kinds=HEAD_LESION_KINDS, contrast_range=(contrast, contrast))
    for i, kind in enumerate(HEAD_LESION_KINDS):
        assert head_masks[i].any() and not (head_masks[i] & ~brains[i]).any(), kind
        assert np.abs(sick[i] - heads[i])[head_masks[i]].mean() > 0.02 * contrast, kind
