"""Each task's error and error map on deterministic views of unmodified images."""

import pytest
import torch

from monai_mtlmad.networks import MTLMoENet
from monai_mtlmad.tasks import DEFAULT_TASKS, create_tasks


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
    tasks = {t.name: t for t in create_tasks(["inpainting", "jigsaw"], 2)}
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
