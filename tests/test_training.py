"""Joint training: real steps on generated phantoms lower every task's loss and leave routing task-specific."""

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


def test_fifty_joint_steps_lower_every_task_loss_and_experts_specialise():
    torch.manual_seed(0)
    images = torch.from_numpy(head_phantoms(16, (48, 48), seed=3))
    held_out = torch.from_numpy(head_phantoms(8, (48, 48), seed=4))
    tasks = create_tasks(
        ["inpainting", {"name": "jigsaw", "grid": 2}, "orientation", "pseudo_anomaly", {"name": "pseudo_label", "patch_size": 8}],
        spatial_dims=2,
    )
    tasks[0].transform.patch_size = 8
    net = MTLMoENet(2, 1, {t.name: t.head for t in tasks}, channels=(16, 32, 64), strides=(2, 2, 2), num_experts=4, top_k=2)
    criterion = MultiTaskLoss([t.name for t in tasks])
    optimizer = torch.optim.AdamW(net.parameters(), lr=3e-3)
    before = fixed_view_losses(net, tasks, held_out)
    g = torch.Generator().manual_seed(0)
    for step in range(50):
        for t in tasks:
            t.set_progress(step / 50)
        batch = images[torch.randperm(16, generator=g)[:4]]
        parts = multitask_train_step(net, tasks, criterion, optimizer, batch, g)
    after = fixed_view_losses(net, tasks, held_out)
    for name in DEFAULT_TASKS:
        assert after[name] < 0.9 * before[name], (name, before[name], after[name])
    assert set(parts) == set(DEFAULT_TASKS) | {"moe", "total"}
    usage = net.expert_usage()
    for block, stats in usage.items():
        sel = stats["selection"]
        rows = sel[sel.sum(1) > 0]  # tasks that reach this block
        marginal = rows.sum(0) / rows.sum()
        assert marginal.max() < 0.9, (block, marginal)  # not collapsed onto one expert
        diff = (rows[:, None] - rows[None]).abs().sum(-1)
        assert diff.max() > 0.2, (block, rows)  # not the same routing for every task
