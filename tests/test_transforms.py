"""Proxy-task transforms: shapes, dtypes, seeding, 2D/3D, 1/3 channels, numpy/torch, target consistency."""

import numpy as np
import pytest
import torch
from conftest import INPUT_KINDS, as_input

from monai_mtlmad.transforms import (
    PseudoLabel,
    PseudoLabeld,
    RandInpaintMask,
    RandInpaintMaskd,
    RandJigsaw,
    RandJigsawd,
    RandOrientation,
    RandOrientationd,
    RandPseudoAnomaly,
    RandPseudoAnomalyd,
    lattice_masks,
    maximal_hamming_permutations,
    pose_table,
)
from monai_mtlmad.transforms import RandCoarseNoise, RandCoarseNoised
from monai_mtlmad.transforms import functional as Fn

SHAPES = [(1, 48, 48), (3, 48, 48), (1, 16, 16, 16), (3, 16, 16, 16)]


def image(shape, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random(shape).astype(np.float32) * 0.2
    centre = tuple(slice(s // 4, 3 * s // 4) for s in shape[1:])
    x[(slice(None),) + centre] += 0.7  # a bright foreground in the middle
    return x


def to_numpy(v):
    return v.detach().cpu().numpy() if torch.is_tensor(v) else np.asarray(v)


def same_type(out, inp):
    if isinstance(inp, np.ndarray):
        return isinstance(out, np.ndarray)
    return torch.is_tensor(out) and out.device == inp.device


RANDOM_TRANSFORMS = [
    lambda: RandInpaintMask(patch_size=4),
    lambda: RandJigsaw(grid=3, num_permutations=10),
    lambda: RandOrientation(),
    lambda: RandPseudoAnomaly(prob=1.0),
    lambda: RandJigsaw(grid=3, num_permutations=10, random_shift=True),
    lambda: RandCoarseNoise(cell=4),
]


@pytest.mark.parametrize("make", RANDOM_TRANSFORMS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", INPUT_KINDS)
def test_random_transform_contract(make, shape, kind):
    x = as_input(image(shape), kind)
    t = make()
    t.set_random_state(7)
    view, target = t(x)
    assert same_type(view, x) and same_type(target, x)
    assert tuple(view.shape) == shape and view.dtype == x.dtype
    # seeded: the same seed gives the same view and target, another seed another view
    t.set_random_state(7)
    view2, target2 = t(x)
    np.testing.assert_array_equal(to_numpy(view), to_numpy(view2))
    np.testing.assert_array_equal(to_numpy(target), to_numpy(target2))
    views = set()
    for seed in range(6):
        t.set_random_state(seed)
        views.add(to_numpy(t(x)[0]).tobytes())
    assert len(views) > 1


@pytest.mark.parametrize("shape", SHAPES)
def test_inpaint_mask_hides_masked_pixels_only(shape):
    x = image(shape)
    view, mask = RandInpaintMask(patch_size=4, fill_value=-1.0).set_random_state(3)(x)
    assert mask.shape == (1,) + shape[1:] and mask.dtype == np.float32
    hidden = mask[0] > 0
    assert 0 < hidden.mean() < 1
    assert np.all(view[:, hidden] == -1.0)
    np.testing.assert_array_equal(view[:, ~hidden], x[:, ~hidden])


@pytest.mark.parametrize("spatial,patch,stride", [((48, 40), 4, 2), ((50, 37), 6, 3), ((16, 12, 20), (2, 3, 4), 2)])
def test_inference_masks_cover_each_pixel_exactly_once(spatial, patch, stride):
    masks = RandInpaintMask(patch_size=patch, stride=stride).inference_masks(spatial)
    assert masks.shape == (stride ** len(spatial),) + spatial
    assert torch.all(masks.sum(0) == 1)
    # and the deterministic mode uses exactly those masks
    x = image((1,) + spatial)
    for k in range(masks.shape[0]):
        _, m = RandInpaintMask(patch_size=patch, stride=stride, mask_index=k)(x)
        np.testing.assert_array_equal(m[0] > 0, masks[k].numpy())


def test_permutation_set_is_fixed_distinct_and_spread():
    p = maximal_hamming_permutations(9, 30, seed=0)
    np.testing.assert_array_equal(p, maximal_hamming_permutations(9, 30, seed=0))
    assert torch.equal(p[0], torch.arange(9))
    assert len({tuple(r.tolist()) for r in p}) == 30
    assert all(sorted(r.tolist()) == list(range(9)) for r in p)
    dist = (p[:, None, :] != p[None, :, :]).sum(-1) + 100 * torch.eye(30, dtype=torch.long)
    assert dist.min() >= 6  # far apart, as maximal-Hamming selection promises (random pairs average ~8)


@pytest.mark.parametrize("shape,grid", [((1, 48, 48), 3), ((3, 50, 47), 3), ((1, 16, 16, 16), 2), ((3, 17, 16, 18), 2)])
def test_unshuffling_jigsaw_view_with_its_target_restores_image(shape, grid):
    x = image(shape)
    t = RandJigsaw(grid=grid, num_permutations=12)
    for seed in range(4):
        view, target = t.set_random_state(seed)(x)
        # the target says where each pixel's tile came from: scatter tiles back by it
        dims = len(shape) - 1
        g = (grid,) * dims
        tiles = Fn.jigsaw_tile_shape(shape[1:], g)
        restored = x.copy()
        region = tuple(slice(0, a * b) for a, b in zip(g, tiles))
        vt = torch.as_tensor(view)[(slice(None),) + region].unsqueeze(0)
        tgt = torch.as_tensor(target[0])
        corners = tgt[tuple(slice(0, a * b, b) for a, b in zip(g, tiles))].reshape(-1)  # original pos per view tile
        perm_back = torch.argsort(corners)
        out = Fn._from_tiles(Fn._to_tiles(vt, g)[:, :, perm_back], g)[0].numpy()
        restored[(slice(None),) + region] = out
        np.testing.assert_array_equal(restored, x)
        outside = np.ones(shape[1:], bool)
        outside[region] = False
        assert np.all(target[0][outside] == -1) and np.all(target[0][~outside] >= 0)
        # the transform's own unshuffle agrees
        back = t.unshuffle(torch.as_tensor(view)[None], torch.tensor([t.last_permutation]))[0].numpy()
        np.testing.assert_array_equal(back, x)


def test_jigsaw_target_is_consistent_with_permutation_id():
    x = image((1, 30, 30))
    t = RandJigsaw(grid=3, num_permutations=10)
    for seed in range(5):
        _, target = t.set_random_state(seed)(x)
        perm = t.permutations(2)[t.last_permutation]
        np.testing.assert_array_equal(target[0, ::10, ::10].reshape(-1), perm.numpy())


@pytest.mark.parametrize("dims,num", [(2, 4), (2, 8), (3, 24), (3, 4)])
def test_undoing_the_pose_restores_image_and_poses_differ(dims, num):
    shape = (3,) + (12,) * dims
    x = image(shape, seed=dims)
    t = RandOrientation(num_poses=num)
    xt = torch.as_tensor(x)[None].expand(num, *shape)
    ids = torch.arange(num)
    views = t.views_for(xt, ids)
    assert len({v.numpy().tobytes() for v in views}) == num  # all poses distinct
    torch.testing.assert_close(t.inverse(views, ids), xt, rtol=0, atol=0)
    for seed in range(3):
        view, pose = t.set_random_state(seed)(x)
        assert pose.dtype == np.int64 and 0 <= int(pose) < num
        np.testing.assert_array_equal(t.inverse(torch.as_tensor(view)[None], torch.tensor([int(pose)]))[0].numpy(), x)


def test_pose_tables_are_proper_rotations():
    for dims, num in [(2, 4), (3, 24)]:
        for order, flips in pose_table(dims, num):
            m = np.eye(dims)[list(order)] * np.where(flips, -1, 1)[:, None]
            assert np.isclose(np.linalg.det(m), 1.0)
    assert pose_table(2, 4)[0] == ((0, 1), (False, False))
    with pytest.raises(ValueError, match="num_poses"):
        pose_table(2, 24)


def test_orientation_rejects_non_square_with_clear_message():
    with pytest.raises(ValueError, match="equal sizes"):
        RandOrientation(pose_index=2)(image((1, 32, 48)))


@pytest.mark.parametrize("shape", SHAPES)
def test_pseudo_anomaly_changes_image_inside_its_mask(shape):
    x = image(shape)
    t = RandPseudoAnomaly(prob=1.0, radius_range=(0.15, 0.2))
    for kind in ("foreign", "intensity", "deformation"):
        t_k = RandPseudoAnomaly(prob=1.0, kinds=[kind], radius_range=(0.15, 0.2)).set_random_state(1)
        view, target = t_k(x)
        assert target.dtype == np.float32 and target.shape == (1,) + shape[1:]
        assert 0 <= target.min() and target.max() <= 1 and target.max() > 0.5
        change = np.abs(view - x).mean(0)
        inside, outside = target[0] > 0.5, target[0] < 0.01
        assert change[inside].mean() > 5 * max(change[outside].mean(), 1e-4), kind
    # prob=0: untouched image, empty target
    view, target = RandPseudoAnomaly(prob=0.0)(x)
    np.testing.assert_array_equal(view, x)
    assert target.max() == 0
    del t


def test_pseudo_anomaly_kinds_and_sizes_follow_documented_ranges():
    x = torch.as_tensor(image((1, 64, 64)))[None].expand(64, -1, -1, -1)
    g = torch.Generator().manual_seed(0)
    t = RandPseudoAnomaly(prob=1.0, radius_range=(0.05, 0.1))
    _, target = t.batched(x, g)
    area = (target > 0.5).float().mean((1, 2, 3))
    # radius 0.05..0.1 of the side (aspect 0.7..1.3, irregular border): area fraction well inside (0.002, 0.06)
    assert area.min() > 0.002 and area.max() < 0.06
    big = RandPseudoAnomaly(prob=1.0, radius_range=(0.2, 0.25)).batched(x, g)[1]
    assert (big > 0.5).float().mean() > 3 * area.mean()
    # centres lie in the foreground (the bright middle)
    fg = t.foreground(x)
    peak = target.flatten(1).argmax(1)  # the blob centre (foreign blobs peak at their opacity, not 1)
    assert fg.flatten(1)[torch.arange(64), peak].all()
    with pytest.raises(ValueError, match="kinds"):
        RandPseudoAnomaly(kinds=["teleport"])


def test_pseudo_anomaly_foreign_patch_comes_from_source():
    x = np.zeros((1, 32, 32), np.float32) + 0.5
    src = np.ones((1, 32, 32), np.float32)
    view, target = RandPseudoAnomaly(prob=1.0, kinds=["foreign"], opacity_range=(1.0, 1.0)).set_random_state(0)(
        x, source=src
    )
    inside = target[0] > 0.99
    assert inside.any() and np.allclose(view[0][inside], 1.0, atol=0.02)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", INPUT_KINDS)
def test_pseudo_label(shape, kind):
    x = as_input(image(shape), kind)
    labels = PseudoLabel(classes=3)(x)
    assert same_type(labels, x) and tuple(labels.shape) == (1,) + shape[1:]
    ln = to_numpy(labels)
    assert ln.dtype == np.int64 and set(np.unique(ln)) <= {0, 1, 2} and len(np.unique(ln)) >= 2
    # the bright middle gets the top class, the dim border a lower one
    mid = tuple(s // 2 for s in shape[1:])
    assert ln[(0,) + mid] > ln[(0,) + (0,) * (len(shape) - 1)]
    edges = to_numpy(PseudoLabel(method="edges")(x))
    assert set(np.unique(edges)) == {0, 1} and edges.mean() < 0.5
    assert to_numpy(PseudoLabel()(as_input(np.zeros(shape, np.float32), kind))).max() == 0
    with pytest.raises(ValueError, match="method"):
        PseudoLabel(method="kmeans")


def test_dictionary_transforms_write_targets_and_share_draws():
    x = image((1, 48, 48))
    d = {"image": x, "other": x.copy()}
    out = RandInpaintMaskd(["image", "other"], patch_size=4).set_random_state(0)(d)
    np.testing.assert_array_equal(out["image"], out["other"])
    np.testing.assert_array_equal(out["image_inpaint_mask"], out["other_inpaint_mask"])
    out = RandJigsawd("image", num_permutations=10).set_random_state(0)(d)
    assert out["image_jigsaw_target"].shape == (1, 48, 48) and int(out["image_jigsaw_perm"]) in range(10)
    out = RandOrientationd("image", pose_postfix="rot").set_random_state(0)(d)
    assert "image_rot" in out
    out = RandPseudoAnomalyd("image", prob=1.0, source_key="other").set_random_state(0)(d)
    assert out["image_anomaly_mask"].max() > 0.5
    out = PseudoLabeld("image")(d)
    assert out["image_pseudo_label"].shape == (1, 48, 48)
    # the same seed through the dictionary class gives the array class's output
    a = RandJigsaw(num_permutations=10).set_random_state(5)(x)[0]
    b = RandJigsawd("image", num_permutations=10).set_random_state(5)({"image": x})["image"]
    np.testing.assert_array_equal(a, b)


def test_lattice_masks_helper_is_exported():
    assert lattice_masks((8, 8), 2, 2).shape == (4, 8, 8)


@pytest.mark.parametrize("shape", [(1, 64, 48), (2, 24, 20, 16)])
def test_coarse_noise_is_smooth_and_on_the_foreground_only(shape):
    x = torch.from_numpy(image(shape)) * (torch.from_numpy(image(shape)) > 0.5)  # tissue on a black surround
    t = RandCoarseNoise(cell=8, std_range=(0.2, 0.2))
    t.set_random_state(3)
    view, noise = t(x)
    torch.testing.assert_close(view - x, noise)
    background = x.mean(0) == 0
    assert float(noise[:, background].abs().max()) == 0.0 and float(noise[:, ~background].std()) > 0.05
    # low-frequency: neighbours inside the tissue differ far less than the noise's spread (white noise: ~1.13 x std)
    both = ~background[1:] & ~background[:-1]
    step = noise.diff(dim=1)[:, both].abs().mean()
    assert float(step) < 0.35 * float(noise[:, ~background].std())
    # dictionary version: one draw, the noise written beside the key
    d = RandCoarseNoised("image", cell=8, std_range=(0.2, 0.2))
    d.set_random_state(3)
    out = d({"image": x})
    torch.testing.assert_close(out["image"], view)
    torch.testing.assert_close(out["image_noise"], noise)


def test_roll_batch_rolls_each_sample_by_its_own_shift():
    x = torch.randn(3, 2, 10, 12)
    shifts = torch.tensor([[1, -2], [0, 5], [13, 3]])
    rolled = Fn.roll_batch(x, shifts)
    for b in range(3):
        torch.testing.assert_close(rolled[b], torch.roll(x[b], tuple(shifts[b].tolist()), (1, 2)), rtol=0, atol=0)
    torch.testing.assert_close(Fn.roll_batch(rolled, -shifts), x, rtol=0, atol=0)


def test_tilt_rotates_in_pixel_units_in_the_last_two_axes_and_keeps_the_inscribed_disc():
    from monai_mtlmad.transforms.functional import tilt_batch

    x = torch.rand(2, 1, 32, 32)
    quarter = tilt_batch(x, torch.tensor([90.0, 0.0]))
    yy, xx = torch.meshgrid(torch.arange(32) - 15.5, torch.arange(32) - 15.5, indexing="ij")
    disc = yy**2 + xx**2 <= 16**2
    # 90 degrees is a quarter turn of the grid (one direction or the other), exact inside the disc, zero outside
    turned = [torch.rot90(x[0, 0], k, (0, 1)) for k in (1, -1)]
    assert min(float((quarter[0, 0] - t)[disc].abs().max()) for t in turned) < 1e-4
    assert torch.allclose(quarter[1, 0][disc], x[1, 0][disc], atol=1e-5) and not quarter[:, :, ~disc].any()
    # a non-square plane is not sheared: a bar across a 40x60 picture, turned 90 degrees, is as wide as before
    bar = torch.zeros(1, 1, 40, 60)
    bar[..., 18:22, :] = 1
    upright = tilt_batch(bar, torch.tensor([90.0]))[0, 0]
    assert float(upright[20].sum()) == pytest.approx(4.0, abs=0.05) and float(upright[:, 30].sum()) > 30
    # volumes: each slice along the first spatial axis turned alike
    vol = torch.rand(1, 1, 3, 32, 32)
    assert torch.allclose(tilt_batch(vol, torch.tensor([30.0]))[:, :, 1], tilt_batch(vol[:, :, 1], torch.tensor([30.0])),
                          atol=1e-5)
