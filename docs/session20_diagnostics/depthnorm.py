"""Diagnostic: each task map normalised by its normal mean/std at the same relative depth inside the body."""
import torch, numpy as np, sys
from scipy import ndimage
from sklearn.metrics import roc_auc_score
from monai_mtlmad.transforms.foreground import foreground_mask, foreground_quantile
from monai_mtlmad.metrics import pixel_auroc_anomalous
c = torch.load(sys.argv[1], weights_only=False); imgs = torch.load(sys.argv[1] + '.images.pt', weights_only=False)
y = c['label']; les = c['mask'].as_tensor().bool(); fg = c['fg'].bool()
body = foreground_mask(imgs, 0.0)
dist = np.stack([ndimage.distance_transform_edt(b[0]) for b in body.numpy()])
req = (3 * body.flatten(1).sum(1).float().numpy() / (4 * np.pi)) ** (1 / 3)
depth = torch.from_numpy(dist / req[:, None, None, None])[:, None].float()
NB = 12
bins = torch.clamp((depth * NB / 1.0).long(), 0, NB - 1)  # depth 0..1 of the radius
normals = torch.where(y == 0)[0]; half = [normals[0::2], normals[1::2]]
def norm(m):
    out = torch.empty_like(m)
    stats = []
    for k in range(2):
        idx = half[k]; mm, bb, ff = m[idx][fg[idx]], bins[idx][fg[idx]], None
        mu = torch.stack([mm[bb == b].mean() if (bb == b).sum() > 50 else mm.mean() for b in range(NB)])
        sd = torch.stack([mm[bb == b].std() if (bb == b).sum() > 50 else mm.std() for b in range(NB)])
        stats.append((mu, sd))
    for i in range(len(y)):
        if y[i] == 0:
            k = 1 if i in set(half[0].tolist()) else 0  # the other fold's statistics
            mu, sd = stats[k]
        else:
            mu, sd = (stats[0][0] + stats[1][0]) / 2, (stats[0][1] + stats[1][1]) / 2
        out[i] = (m[i] - mu[bins[i]]) / sd[bins[i]]
    return out
names = [k for k in c if k.startswith('map:')] + ['fused']
w = c['map_weights']
res = {}
zs = {}
for k in names:
    m = c[k].float()
    z = norm(m); zs[k] = z
    for tag, mm in (('as is', m), ('depth-normalised', z)):
        q = foreground_quantile(mm, fg, 0.999)[0]; q9 = foreground_quantile(mm, fg, 0.99)[0]
        print(f'{k:22s} {tag:17s} image q99.9 {roc_auc_score(y, q):.3f} q99 {roc_auc_score(y, q9):.3f} pixel-in-lesion-vols {pixel_auroc_anomalous(mm, les, y, fg):.3f}')
eq = sum(zs['map:' + t] for t in ['inpainting', 'pseudo_anomaly', 'pseudo_label']) / 3
q = foreground_quantile(eq, fg, 0.999)[0]
print('mean of depth-normalised inpainting/pa/pl', f'{roc_auc_score(y, q):.3f}', f'{pixel_auroc_anomalous(eq, les, y, fg):.3f}')
