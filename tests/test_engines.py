"""The Ignite engines on real batches: the validation figure used for model selection when valid has no anomaly."""

import torch
from ignite.engine import Events

from monai_mtlmad.data import head_phantoms
from monai_mtlmad.engines import AnomalyEvaluator
from monai_mtlmad.networks import MTLMoENet
from monai_mtlmad.scoring import AnomalyScorer
from monai_mtlmad.tasks import DEFAULT_TASKS, create_tasks


def test_validation_task_loss_does_not_drift_with_the_curricula():
    torch.manual_seed(0)
    tasks = create_tasks(DEFAULT_TASKS, 2)
    net = MTLMoENet(2, 1, {t.name: t.head for t in tasks}, channels=(8, 16, 32), strides=(2, 2, 2))
    images = torch.from_numpy(head_phantoms(4, (32, 32), seed=50))
    batches = [{"image": images[:2], "label": torch.zeros(2)}, {"image": images[2:], "label": torch.zeros(2)}]
    scorer = AnomalyScorer(net, tasks)

    def losses(progress):
        for t in tasks:
            t.set_progress(progress)
        seen = []
        evaluator = AnomalyEvaluator("cpu", batches, scorer, calibration=batches, task_loss=True)
        evaluator.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(e.state.output["loss"]))
        evaluator.run()
        assert all(t.progress == progress for t in tasks)  # the trainer's curricula are left where they were
        return seen

    early, late = losses(0.0), losses(0.9)
    assert len(early) == 2 and early == late  # fixed views at full difficulty, whatever the training progress


def test_trainer_amp_runs_the_forward_in_bfloat16_and_keeps_float32_weights():
    from monai_mtlmad.engines import MultiTaskTrainer
    from monai_mtlmad.losses import MultiTaskLoss

    images = torch.from_numpy(head_phantoms(4, (32, 32), seed=51))
    batches = [{"image": images[:2]}, {"image": images[2:]}]
    for amp in (False, True):
        torch.manual_seed(0)
        tasks = create_tasks(DEFAULT_TASKS, 2)
        net = MTLMoENet(2, 1, {t.name: t.head for t in tasks}, channels=(8, 16, 32), strides=(2, 2, 2))
        before = {k: v.clone() for k, v in net.state_dict().items()}
        loss = MultiTaskLoss([t.name for t in tasks])
        opt = torch.optim.AdamW(list(net.parameters()) + list(loss.parameters()), 1e-3)
        seen = []
        net.encoder[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
        trainer = MultiTaskTrainer("cpu", 1, batches, net, tasks, opt, loss, amp=amp)
        losses = []
        trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(float(e.state.output["loss"])))
        trainer.run()
        assert set(seen) == {torch.bfloat16 if amp else torch.float32}
        assert all(v.dtype == before[k].dtype for k, v in net.state_dict().items())
        assert all(torch.isfinite(torch.tensor(losses))) and len(losses) == 2
        assert not torch.equal(net.encoder[0].conv.unit0.conv.weight, before["encoder.0.conv.unit0.conv.weight"])
