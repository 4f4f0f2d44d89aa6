"""Property-based tests (hypothesis): every transform and task on any shape in the supported range, any dtype,
random, constant and binary content, 1 or 3 channels, numpy or torch: no crash, no NaN, the right shapes."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monai_mtlmad.tasks import DEFAULT_TASKS, create_tasks
from monai_mtlmad.transforms import (
    ForegroundMask,
    PseudoLabel,
    RandInpaintMask,
    RandJigsaw,
    RandOrientation,
    RandPseudoAnomaly,
)

DTYPES = [np.uint8, np.int16, np.float32, np.float64]
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)


@st.composite
def images(draw, dims=None):
    """``(C, *spatial)`` arrays: 2D sides 8-64 or 3D sides 8-24, 1 or 3 channels, random, constant or binary."""
    dims = dims or draw(st.sampled_from([2, 3]))
    sides = st.integers(8, 64) if dims == 2 else st.integers(8, 24)
    shape = (draw(st.sampled_from([1, 3])), *[draw(sides) for _ in range(dims)])
    dtype = draw(st.sampled_from(DTYPES))
    content = draw(st.sampled_from(["random", "constant", "binary"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    top = 255 if dtype == np.uint8 else 1000 if dtype == np.int16 else 1.0
    if content == "random":
        x = rng.random(shape) * top
    elif content == "constant":
        x = np.full(shape, draw(st.floats(0, 1)) * top)
    else:
        x = (rng.random(shape) > 0.5) * top
    x = x.astype(dtype)
    return torch.from_numpy(x) if draw(st.booleans()) else x


def finite(*arrays):
    return all(bool(torch.isfinite(torch.as_tensor(a).float()).all()) for a in arrays)


@SETTINGS
@given(images())
def test_views_keep_shape_and_stay_finite(img):
    shape = tuple(img.shape)
    for transform in (RandInpaintMask(patch_size=4), RandJigsaw(grid=2), RandPseudoAnomaly(prob=1.0)):
        transform.set_random_state(0)
        view, target = transform(img)
        assert tuple(view.shape) == shape and type(view) is type(img)
        assert finite(view, target)
        if not isinstance(transform, RandJigsaw):
            assert tuple(target.shape) == (1, *shape[1:])
    for seed in range(4):  # poses that swap axes need a square or a cube (preprocessing makes one)
        try:
            view, pose = RandOrientation().set_random_state(seed)(img)
        except ValueError as e:
            assert len(set(shape[1:])) > 1 and "would change the spatial shape" in str(e)
            continue
        assert tuple(view.shape) == shape and finite(view) and int(pose) >= 0
    labels = PseudoLabel()(img)
    assert tuple(labels.shape) == (1, *shape[1:]) and 0 <= int(labels.min()) and int(labels.max()) < 3
    mask = ForegroundMask()(img)
    assert tuple(mask.shape) == (1, *shape[1:]) and bool(torch.as_tensor(mask).any())


@st.composite
def batches(draw):
    """Float ``(B, C, *spatial)`` tensors the tasks see (preprocessing makes squares and cubes whose sides are
    multiples of 16): random, constant or binary content."""
    dims = draw(st.sampled_from([2, 3]))
    side = draw(st.sampled_from([16, 32, 48]) if dims == 2 else st.sampled_from([16, 32]))
    channels = draw(st.sampled_from([1, 3]))
    shape = (draw(st.integers(1, 3)), channels, *[side] * dims)
    content = draw(st.sampled_from(["random", "constant", "binary"]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    x = torch.rand(shape, generator=g)
    if content == "constant":
        x = torch.full(shape, float(draw(st.floats(0, 1))))
    elif content == "binary":
        x = (x > 0.5).float()
    return x


@SETTINGS
@given(batches())
def test_tasks_views_losses_and_errors_on_any_batch(x):
    dims, channels = x.ndim - 2, x.shape[1]
    g = torch.Generator().manual_seed(0)
    for task in create_tasks(DEFAULT_TASKS, dims, channels):
        kind, out = task.head
        views = task.training_views(x, g)
        assert views.inputs.shape[1:] == x.shape[1:] and finite(views.inputs)
        n = views.inputs.shape[0]
        # any output the network could give: the loss is finite and differentiable
        output = torch.randn((n, out, *x.shape[2:]) if kind == "dense" else (n, out), generator=g, requires_grad=True)
        loss = task.loss(output, views)
        assert loss.ndim == 0 and finite(loss)
        loss.backward()
        assert finite(output.grad)

        def predict(inputs, _task):
            shape = (inputs.shape[0], out, *inputs.shape[2:]) if kind == "dense" else (inputs.shape[0], out)
            return torch.randn(shape, generator=g)

        err, emap = task.score(predict, x)
        assert err.shape == (x.shape[0],) and finite(err)
        if kind == "dense":
            assert emap.shape == (x.shape[0], 1, *x.shape[2:]) and finite(emap)
        else:
            assert emap is None
