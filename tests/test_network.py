"""MTLMoENet: forward/backward in 2D and 3D with all tasks, routing statistics, the MoE losses, the ablation."""

import math

import pytest
import torch

from monai_mtlmad.losses import MultiTaskLoss
from monai_mtlmad.networks import MoEFeedForward, MTLMoENet, mutual_information_loss
from monai_mtlmad.tasks import DEFAULT_TASKS, TASK_REGISTRY, ProxyTask, create_tasks, register_task
from monai_mtlmad.engines import build_task_batch


def make(spatial_dims, moe=True, **kw):
    tasks = create_tasks(DEFAULT_TASKS, spatial_dims, kw.pop("in_channels", 1))
    net = MTLMoENet(spatial_dims, tasks[0].in_channels, {t.name: t.head for t in tasks}, moe=moe, **kw)
    return tasks, net


@pytest.mark.parametrize(
    "spatial_dims,shape,channels",
    [(2, (4, 1, 128, 128), 1), (3, (2, 1, 64, 64, 64), 1), (2, (2, 3, 64, 64), 3)],
)
def test_forward_backward_all_tasks(spatial_dims, shape, channels):
    torch.manual_seed(0)
    tasks, net = make(spatial_dims, in_channels=channels, channels=(8, 16, 32, 64) if spatial_dims == 3 else (16, 32, 64, 128), strides=(2, 2, 2, 2))
    images = torch.rand(shape)
    inputs, task_ids, views = build_task_batch(tasks, images, torch.Generator().manual_seed(0))
    assert inputs.shape == (shape[0] * len(tasks),) + shape[1:]
    out = net(inputs, task_ids)
    assert set(out) == set(DEFAULT_TASKS)
    for t in tasks:
        if t.kind == "dense":
            assert out[t.name].shape == (shape[0], t.out_channels) + shape[2:]
        else:
            assert out[t.name].shape == (shape[0], t.out_channels)
    losses = {t.name: t.loss(out[t.name], v) for t, v in zip(tasks, views)}
    total, parts = MultiTaskLoss([t.name for t in tasks])(losses, net.aux_loss())
    total.backward()
    assert all(math.isfinite(v) for v in parts.values())
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert sum(g is not None and g.abs().sum() > 0 for g in grads) > 0.8 * len(grads)


def test_outputs_follow_task_ids_in_mixed_order():
    torch.manual_seed(0)
    tasks, net = make(2, channels=(8, 16, 32), strides=(2, 2, 2))
    net.eval()
    x = torch.rand(6, 1, 32, 32)
    ids = torch.tensor([3, 0, 3, 2, 0, 1])
    out = net(x, ids)
    # each task's outputs are its samples in batch order: running them alone gives the same values
    alone = net(x[ids == 3], ids[ids == 3])
    torch.testing.assert_close(out["pseudo_anomaly"], alone["pseudo_anomaly"], atol=1e-5, rtol=1e-5)
    assert "pseudo_label" not in out and out["inpainting"].shape[0] == 2


def test_moe_routes_by_task_and_ablation_has_same_interface():
    torch.manual_seed(0)
    tasks, net = make(2, channels=(8, 16, 32), strides=(2, 2, 2), num_experts=4, top_k=2)
    x = torch.rand(10, 1, 32, 32)
    ids = torch.arange(5).repeat(2)
    net(x, ids)
    usage = net.expert_usage(reset=True)
    assert set(usage) == {"bottleneck_moe", "decoder_moe.0", "decoder_moe.1"}
    for name, stats in usage.items():
        assert stats["selection"].shape == (5, 4)
        # every token picks top_k experts; orientation (global, id 2) never reaches the decoder blocks
        visited = torch.tensor([1.0, 1.0, 0.0 if name.startswith("decoder") else 1.0, 1.0, 1.0])
        torch.testing.assert_close(stats["selection"].sum(1), 2.0 * visited)
        torch.testing.assert_close(stats["probability"].sum(1), visited)
    # task-conditioned gates: tasks start from different routings
    p = usage["bottleneck_moe"]["probability"]
    assert (p[:, None] - p[None]).abs().sum(-1).max() > 0.1
    assert net.expert_usage()["bottleneck_moe"]["selection"].sum() == 0  # reset
    _, shared = make(2, moe=False, channels=(8, 16, 32), strides=(2, 2, 2))
    out = shared(x, ids)
    assert set(out) == set(DEFAULT_TASKS) and shared.expert_usage() == {}
    assert float(shared.aux_loss()) == 0.0


def test_mutual_information_loss_prefers_specialised_balanced_routing():
    e = 4
    ids = torch.arange(4)
    specialised = torch.eye(e).view(4, e, 1, 1)  # task t -> expert t
    uniform = torch.full((4, e, 1, 1), 1 / e)
    collapsed = torch.zeros(4, e, 1, 1)
    collapsed[:, 0] = 1
    assert mutual_information_loss(specialised, ids, 4) == pytest.approx(0.0, abs=1e-6)
    assert mutual_information_loss(uniform, ids, 4) == pytest.approx(1.0, abs=1e-6)
    assert mutual_information_loss(collapsed, ids, 4) == pytest.approx(1.0, abs=1e-6)
    # a per-gate balance loss would score `uniform` best; this one ranks it with the collapse


def test_network_rejects_bad_input_clearly():
    _, net = make(2, channels=(8, 16, 32), strides=(2, 2, 2))
    with pytest.raises(ValueError, match="divisible by 8"):
        net(torch.rand(1, 1, 36, 32), torch.tensor([0]))
    with pytest.raises(ValueError, match="expected input"):
        net(torch.rand(1, 1, 32), torch.tensor([0]))
    with pytest.raises(ValueError, match="top_k"):
        MoEFeedForward(2, 8, 2, num_experts=2, top_k=3)
    with pytest.raises(ValueError, match="kind"):
        MTLMoENet(2, 1, {"x": ("pixelwise", 1)})


def test_registry_makes_a_new_task_one_module():
    @register_task("test_identity")
    class IdentityTask(ProxyTask):
        kind = "dense"
        out_channels = 1

        def training_views(self, images, generator=None, batch=None):
            from monai_mtlmad.tasks import TaskViews

            return TaskViews(images, images)

        def loss(self, output, views):
            return (output - views.target).abs().mean()

        def inference_views(self, images, batch=None):
            yield self.training_views(images)

        def error(self, output, views):
            m = (output - views.target).abs()
            return m.flatten(1).mean(1), m

    try:
        tasks = create_tasks(["inpainting", {"name": "test_identity"}], 2, 1)
        assert [t.name for t in tasks] == ["inpainting", "test_identity"]
        with pytest.raises(ValueError, match="already registered"):
            register_task("test_identity")(IdentityTask)
        with pytest.raises(KeyError, match="unknown task"):
            create_tasks(["nope"])
        with pytest.raises(ValueError, match="once"):
            create_tasks(["jigsaw", "jigsaw"])
    finally:
        TASK_REGISTRY.pop("test_identity")


def test_multitask_loss_weights_and_uncertainty():
    losses = {"a": torch.tensor(2.0), "b": torch.tensor(3.0)}
    total, parts = MultiTaskLoss(["a", "b"], weights={"b": 0.5}, moe_weight=0.1)(losses, torch.tensor(1.0))
    assert float(total) == pytest.approx(2.0 + 1.5 + 0.1)
    assert parts == {"a": 2.0, "b": 3.0, "moe": 1.0, "total": pytest.approx(3.6)}
    learned = MultiTaskLoss(["a", "b"], uncertainty=True)
    with torch.no_grad():
        learned.log_vars.fill_(math.log(2.0))
    assert float(learned(losses)[0].detach()) == pytest.approx((2 + 3) / 2 + 2 * math.log(2.0))
    with pytest.raises(ValueError, match="unknown tasks"):
        MultiTaskLoss(["a"], weights={"z": 1.0})


@pytest.mark.parametrize("shape", [(2, 1, 37, 50), (1, 1, 20, 17, 9)])
def test_forward_padded_runs_a_strided_unet_on_any_size_and_crops_back(shape):
    from monai.networks.nets import UNet

    from monai_mtlmad.networks import forward_padded

    torch.manual_seed(0)
    net = UNet(len(shape) - 2, 1, 2, channels=(4, 8, 16), strides=(2, 2)).eval()
    x = torch.rand(shape)
    with pytest.raises(RuntimeError):
        net(x)  # the sizes do not divide by 4
    with torch.no_grad():
        out = forward_padded(net, x, 4)
        assert out.shape == (shape[0], 2, *shape[2:])
        # the output's origin corner is the network's answer on the same data (padding sits at the far ends)
        big = torch.nn.functional.pad(x, [p for s in reversed(shape[2:]) for p in (0, (-s) % 4)], mode="replicate")
        assert torch.equal(out, net(big)[(..., *[slice(0, s) for s in shape[2:]])])
        assert torch.equal(forward_padded(net, big, 4), net(big))  # no padding when none is needed
