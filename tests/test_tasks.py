"""Each task's error and error map on deterministic views of unmodified images."""

import inspect

import pytest
import torch

from monai_mtlmad.networks import MTLMoENet
from monai_mtlmad.scoring import AnomalyScorer
from monai_mtlmad.tasks import DEFAULT_TASKS, create_task, create_tasks


@pytest.mark.parametrize("spatial_dims,shape", [(2, (2, 1, 48, 48)), (3, (1, 1, 16, 16, 16))])
def test_task_scores_and_maps(spatial_dims, shape):
    torch.manual_seed(0)
    tasks = create_tasks(DEFAULT_TASKS, spatial_dims)
    net = MTLMoENet(spatial_dims, 1, {t.name: t.head for t in tasks}, channels=(8, 16, 32), strides=(2, 2, 2)).eval()
    index = {t.name: i for i, t in enumerate(tasks)}

    def predict(inputs, task):
        return net(inputs, torch.full((inputs.shape[0],), index[task.name]))[task.name]

    images = torch.rand(shape)
    for task in tasks:
        views = list(task.inference_views(images))
        again = list(task.inference_views(images))
        for a, b in zip(views, again):  # deterministic
            torch.testing.assert_close(a.inputs, b.inputs, rtol=0, atol=0)
        err, emap = task.score(predict, images)
        assert err.shape == (shape[0],) and torch.all(err >= 0)
        if task.kind == "global":
            assert emap is None
            continue
        assert emap.shape == (shape[0], 1) + shape[2:]
        torch.testing.assert_close(emap.flatten(1).mean(1), err, rtol=1e-4, atol=1e-6)
    n_views = {t.name: len(list(t.inference_views(images))) for t in tasks}
    assert n_views == {
        "inpainting": 2**spatial_dims,
        "jigsaw": 8,
        "orientation": 4 if spatial_dims == 2 else 24,
        "pseudo_anomaly": 1,
        "pseudo_label": 2**spatial_dims,
    }


def test_inpainting_map_covers_every_pixel_and_jigsaw_map_is_in_image_frame():
    tasks = {t.name: t for t in create_tasks(["inpainting", {"name": "jigsaw", "shifted_grids": False}], 2)}
    images = torch.rand(1, 1, 48, 48)
    # a perfect inpainter: output = the clean image everywhere except one pixel
    wrong = images.clone()
    wrong[0, 0, 5, 7] += 1

    err, emap = tasks["inpainting"].score(lambda x, t: wrong, images)
    assert emap[0, 0, 5, 7] == pytest.approx(1.0) and emap.sum() == pytest.approx(1.0)  # counted exactly once
    # a jigsaw head that is right everywhere except at the view positions of original tile 0
    jig = tasks["jigsaw"]

    def predict(inputs, task):
        out = []
        for v in jig.inference_views(images):
            if torch.equal(v.inputs, inputs):
                logits = torch.nn.functional.one_hot(v.target.clamp_min(0), 9).permute(0, 3, 1, 2).float() * 20
                logits[:, :, v.target[0] == 0] = 0  # uniform: wrong-ish where original tile 0 lies
                out.append(logits)
        return out[0]

    _, jmap = jig.score(predict, images)
    high = jmap[0, 0] > 0.1
    assert high[:16, :16].all() and not high[16:, :].any() and not high[:, 16:].any()  # tile 0, image frame


def _jigsaw_predictor(jig, images, wrong):
    """A jigsaw head that answers each view's target, with uniform logits where ``wrong(view) (B, *spatial)``."""

    def predict(inputs, task):
        for v in jig.inference_views(images):
            if torch.equal(v.inputs, inputs):
                n = jig.out_channels
                logits = torch.nn.functional.one_hot(v.target.clamp_min(0), n).movedim(-1, 1).float() * 20
                return torch.where(wrong(v).unsqueeze(1), torch.zeros_like(logits), logits)
        raise AssertionError("not one of the inference views")

    return predict


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_shifted_jigsaw_maps_return_to_the_image_frame(spatial_dims):
    """Errors tied to image content (a marked region) land on that region whatever the grid shift."""
    jig = create_tasks(["jigsaw"], spatial_dims)[0]
    size = (48, 40) if spatial_dims == 2 else (24, 20, 16)
    images = torch.rand(1, 1, *size) * 0.5
    images[(0, 0) + tuple(slice(3, 9) for _ in size)] = 0.9  # the marker
    _, emap = jig.score(_jigsaw_predictor(jig, images, lambda v: v.inputs[:, 0] > 0.8), images)
    marker = images[0, 0] > 0.8
    assert emap[0, 0][marker].min() > 0.5 and emap[0, 0][~marker].max() < 1e-3


def test_jigsaw_map_shows_no_tile_grid():
    """A learner that errs along the tile boundaries of every view (what a real jigsaw head does) leaves no grid
    in the map when scored over shifted grids: the map (smoothed as the scorer smooths it) along the image's tile
    boundaries is no higher and varies no more than elsewhere; scored on one fixed grid, the boundaries stand out
    (the check can fail)."""
    from monai.networks.layers import GaussianFilter

    images = torch.full((1, 1, 96, 96), 0.5) + 0.05 * torch.rand(1, 1, 96, 96)  # constant texture

    def near_boundary(shape, tile):
        d = [torch.arange(s) % t for s, t in zip(shape, tile)]
        d = [torch.minimum(x, t - x) for x, t in zip(d, tile)]
        return (d[0].view(-1, 1) < 2) | (d[1].view(1, -1) < 2)

    ratios = {}
    for shifted in (True, False):
        jig = create_tasks([{"name": "jigsaw", "shifted_grids": shifted}], 2)[0]
        tile = jig.transform.tile_shape(images.shape[2:])
        band = near_boundary(images.shape[2:], tile)
        _, emap = jig.score(_jigsaw_predictor(jig, images, lambda v: band.expand(v.inputs.shape[0], -1, -1)), images)
        m = GaussianFilter(2, inspect.signature(AnomalyScorer).parameters["sigma"].default)(emap)[0, 0]
        inner = torch.zeros_like(band)
        inner[8:-8, 8:-8] = True  # away from the image border, where smoothing pads
        on, off = m[band & inner], m[~band & inner]
        ratios[shifted] = (float(on.mean() / off.mean()), float(on.var() / off.var()))
    assert ratios[True][0] <= 1.1 and ratios[True][1] <= 1.1, ratios
    assert ratios[False][0] > 3, ratios


def test_denoising_error_is_what_the_restorer_removes():
    task = create_tasks(["denoising"], 2)[0]
    images = torch.rand(2, 1, 32, 40) * 0.2 + 0.4
    err, emap = task.score(lambda x, t: x, images)  # a restorer that leaves normal images as they are
    assert float(emap.abs().max()) == 0.0 and float(err.max()) == 0.0
    restored = images.clone()
    restored[1, 0, 10:14, 20:26] = 0.5  # removes what it takes for noise in one region

    def predict(inputs, t):
        return restored

    err, emap = task.score(predict, images)
    changed = (restored - images).abs()[:, :1]
    torch.testing.assert_close(emap, changed)
    assert float(err[0]) == 0.0 and float(err[1]) > 0
    views = task.training_views(images, torch.Generator().manual_seed(0))
    assert torch.equal(views.target, images) and not torch.equal(views.inputs, images)


def test_tilted_orientation_reads_the_angle_and_keeps_the_number_of_scoring_views():
    torch.manual_seed(0)
    plain = create_task("orientation", 2)
    task = create_task("orientation", 2, tilt=20)
    assert task.out_channels == plain.out_channels + 1 and task.spec == {"name": "orientation", "num_poses": None,
                                                                         "tilt": 20, "tilt_weight": 1.0}
    images = torch.rand(6, 1, 32, 32)
    views = task.training_views(images, torch.Generator().manual_seed(1))
    angles = views.info["tilt"]
    assert angles.shape == (6,) and (angles.abs() <= 1).all() and angles.std() > 0
    scoring = list(task.inference_views(images))
    assert len(scoring) == len(list(plain.inference_views(images)))
    assert [float(v.info["tilt"][0]) for v in scoring] == [0.5, -0.5, 0.5, -0.5]
    # a network that reads pose and angle exactly pays nothing; one that misreads the angle pays its square
    exact = torch.cat([torch.nn.functional.one_hot(views.target, 4) * 50.0, angles[:, None]], 1)
    assert float(task.loss(exact, views)) < 1e-6
    off = exact.clone()
    off[:, 4] += 0.5
    assert float(task.loss(off, views)) == pytest.approx(0.25, abs=1e-5)
    err, emap = task.error(off, views)
    assert emap is None and torch.allclose(err, torch.full((6,), 0.25 / 4), atol=1e-5)
    with pytest.raises(ValueError, match="tilt"):
        create_task("orientation", 2, tilt=60)
