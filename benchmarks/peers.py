"""From-scratch peers a MONAI user would train instead of MTL-MAD, for ``benchmarks/quality.py``.

Each peer is one plain MONAI network trained on one of this package's proxy tasks (so the views, targets and losses
are the ones the learner uses, not a second implementation):

- ``autoencoder``: MONAI ``AutoEncoder`` (no skip connections, so it cannot copy its input) reconstructing the
  image (the denoising task with no noise); map: the absolute residual, median-filtered.
- ``denoising autoencoder``: the coarse-noise denoiser of Kascenas et al. (MIDL 2022): a MONAI ``UNet`` that
  removes low-resolution Gaussian noise from the foreground; map: the absolute residual of the clean image,
  median-filtered (radius 2, their 5x5 filter). Their loss is L2, the task's is L1.
- ``DRAEM-style segmenter``: a MONAI ``UNet`` that segments synthetic anomalies (the pseudo-anomaly task:
  blended foreign patches, BCE + Dice); map: the predicted anomaly probability. DRAEM's reconstructive sub-network
  is left out: the segmenter alone is what "train a segmenter of synthetic anomalies" means to a MONAI user.

Every peer is scored like MTL-MAD's default: the map outside the foreground set to its minimum, the image score the
map's top 1 % (``foreground_quantile``), the threshold the calibration normals' ``1 - fpr`` quantile.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from monai.networks.layers import MedianFilter
from monai.networks.nets import AutoEncoder, UNet

from monai_mtlmad.networks import forward_padded
from monai_mtlmad.scoring import foreground_mask, foreground_quantile
from monai_mtlmad.tasks import create_task

__all__ = ["PEERS", "PeerSpec", "PeerDetector"]


@dataclass(frozen=True)
class PeerSpec:
    network: str  # "autoencoder" or "unet"
    task: str
    task_kwargs: dict = field(default_factory=dict)
    median_radius: int = 0


PEERS = {
    "autoencoder": PeerSpec("autoencoder", "denoising", {"prob": 0.0}, median_radius=2),
    "denoising autoencoder": PeerSpec("unet", "denoising", {}, median_radius=2),
    "DRAEM-style segmenter": PeerSpec("unet", "pseudo_anomaly"),
}

CHANNELS = (16, 32, 64, 128)  # the learner's widths


class PeerDetector:
    """One peer: network, task, training step, maps, image scores and a threshold from calibration normals.

    Args:
        name: a key of :data:`PEERS`.
        spatial_dims, in_channels: of the images.
        rim: foreground erosion, as the learner's scorer uses it.
        quantile: image score = this quantile of the map over the foreground.
        fpr: nominal false-positive rate of the threshold.
        device: where the network runs.
    """

    def __init__(self, name: str, spatial_dims: int = 2, in_channels: int = 1, rim: float = 0.0,
                 quantile: float = 0.99, fpr: float = 0.05, device: torch.device | str = "cpu") -> None:
        if name not in PEERS:
            raise ValueError(f"unknown peer {name!r}; known: {sorted(PEERS)}.")
        self.spec = PEERS[name]
        self.name, self.rim, self.quantile, self.fpr = name, rim, quantile, fpr
        self.task = create_task(self.spec.task, spatial_dims, in_channels, **self.spec.task_kwargs)
        out = self.task.out_channels
        if self.spec.network == "autoencoder":
            net = AutoEncoder(spatial_dims, in_channels, out, channels=CHANNELS, strides=(2,) * len(CHANNELS),
                              num_res_units=1)
        else:
            net = UNet(spatial_dims, in_channels, out, channels=CHANNELS, strides=(2,) * (len(CHANNELS) - 1),
                       num_res_units=2)
        self.net = net.to(device)
        self.median = MedianFilter(self.spec.median_radius, spatial_dims).to(device) if self.spec.median_radius else None
        self.threshold: float | None = None

    def _predict(self, inputs: torch.Tensor, task=None) -> torch.Tensor:
        return forward_padded(self.net, inputs, 2 ** len(CHANNELS))

    def train_step(self, images: torch.Tensor, optimizer: torch.optim.Optimizer, generator: torch.Generator,
                   progress: float) -> float:
        """One optimiser step on a batch ``(B, C, *spatial)`` of normal images; the loss."""
        self.net.train()
        self.task.set_progress(progress)
        with torch.no_grad():
            views = self.task.training_views(images, generator)
        loss = self.task.loss(self._predict(views.inputs), views)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), 5.0)
        optimizer.step()
        return float(loss)

    @torch.no_grad()
    def maps(self, images: torch.Tensor, batch_size: int = 16) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(maps (N, 1, *spatial) with the background at each image's minimum, image scores (N,), foreground)``."""
        self.net.eval()
        out_maps, out_scores, out_fg = [], [], []
        for x in images.split(batch_size):
            _, emap = self.task.score(self._predict, x)
            if self.median is not None:
                emap = self.median(emap)
            fg = foreground_mask(x, self.rim)
            score, emap = foreground_quantile(emap, fg, self.quantile)
            out_maps.append(emap.cpu())
            out_scores.append(score.cpu())
            out_fg.append(fg.cpu())
        return torch.cat(out_maps), torch.cat(out_scores), torch.cat(out_fg)

    def calibrate(self, normal_images: torch.Tensor) -> float:
        """The threshold: the ``1 - fpr`` quantile of the image scores of normal images the peer did not train on."""
        self.threshold = float(torch.quantile(self.maps(normal_images)[1], 1 - self.fpr))
        return self.threshold
