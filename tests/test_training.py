"""Joint training: real steps on generated phantoms lower every task's loss and leave routing task-specific."""

import math

import torch

from monai_mtlmad.data import head_phantoms
from monai_mtlmad.engines import build_task_batch, multitask_train_step
from monai_mtlmad.losses import MultiTaskLoss
from monai_mtlmad.networks import MTLMoENet
from monai_mtlmad.tasks import DEFAULT_TASKS, create_tasks


def fixed_view_losses(net, tasks, images):
    """Each task's loss on the same views (fixed generator), without training."""
    net.eval()
    with torch.no_grad():
        inputs, ids, views = build_task_batch(tasks, images, torch.Generator().manual_seed(123))
        out = net(inputs, ids)
        return {t.name: float(t.loss(out[t.name], v)) for t, v in zip(tasks, views)}


def routing_entropies(net, tasks, images):
    """Per MoE block: the mean normalised gate entropy of each task's routing, H(E | T) / log E (low: each task
    routes sharply), and that of the marginal usage over tasks, H(E) / log E (high: all experts used)."""
    net.reset_usage()
    fixed_view_losses(net, tasks, images)
    out = {}
    for block, stats in net.expert_usage(reset=True).items():
        p = stats["probability"]
        rows = p[p.sum(1) > 0]  # tasks that reach this block
        entropy = lambda q: float(-(q * q.clamp_min(1e-9).log()).sum(-1).mean() / math.log(q.shape[-1]))  # noqa: E731
        out[block] = (entropy(rows), entropy(rows.mean(0, keepdim=True)))
    return out


def test_fifty_joint_steps_lower_every_task_loss_and_experts_specialise():
    torch.manual_seed(0)
    images = torch.from_numpy(head_phantoms(16, (48, 48), seed=3))
    held_out = torch.from_numpy(head_phantoms(8, (48, 48), seed=4))
    tasks = create_tasks(
        ["inpainting", {"name": "jigsaw", "grid": 2}, "orientation", "pseudo_anomaly", {"name": "pseudo_label", "patch_size": 8},
         "denoising"],
        spatial_dims=2,
    )
    tasks[0].transform.patch_size = 8
    net = MTLMoENet(2, 1, {t.name: t.head for t in tasks}, channels=(16, 32, 64), strides=(2, 2, 2), num_experts=4, top_k=2)
    criterion = MultiTaskLoss([t.name for t in tasks])
    optimizer = torch.optim.AdamW(net.parameters(), lr=3e-3)
    before = fixed_view_losses(net, tasks, held_out)
    routing_before = routing_entropies(net, tasks, held_out)
    g = torch.Generator().manual_seed(0)
    for step in range(50):
        for t in tasks:
            t.set_progress(step / 50)
        batch = images[torch.randperm(16, generator=g)[:4]]
        parts = multitask_train_step(net, tasks, criterion, optimizer, batch, g)
    after = fixed_view_losses(net, tasks, held_out)
    names = [t.name for t in tasks]
    for name in names:
        assert after[name] < 0.9 * before[name], (name, before[name], after[name])
    assert set(parts) == set(names) | {"moe", "total"}
    # the mutual-information loss sharpens each task's routing (measured: normalised entropy 0.76-0.89 -> 0.51-0.67;
    # without it 0.75-0.81) while the marginal usage stays balanced (measured 0.895-0.993 over three seeds and both
    # batch layouts, dense views first or in task order; routing collapsed onto the top-2 of 4 experts gives 0.5)
    for block, (task_entropy, marginal_entropy) in routing_entropies(net, tasks, held_out).items():
        assert task_entropy < routing_before[block][0] - 0.1, (block, routing_before[block], task_entropy)
        assert marginal_entropy > 0.85, (block, marginal_entropy)
