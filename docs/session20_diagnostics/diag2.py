import sys, torch, numpy as np
from pathlib import Path
from scipy import ndimage
from sklearn.metrics import roc_auc_score
sys.path.insert(0, '/tmp/exp20/scripts')
from lesion_scale_image_study import test_images
from monai_mtlmad.transforms.foreground import foreground_mask, foreground_quantile
root, cache = Path(sys.argv[1]), sys.argv[2]
c = torch.load(cache, weights_only=False)
imgs = test_images(root, 'head', 3, '5_tasks', 192)
torch.save(imgs, cache + '.images.pt')
body = foreground_mask(imgs, 0.0)[:, 0].numpy()
y = c['label'].numpy(); les = c['mask'].as_tensor()[:, 0].numpy() > 0
dist = np.stack([ndimage.distance_transform_edt(b) for b in body])
req = (3 * body.sum((1, 2, 3)) / (4 * np.pi)) ** (1 / 3)
print('r_eq pct', np.percentile(req, [0, 50, 100]))
fgs = {'today': c['fg'][:, 0].numpy()}
for rel in [0.15, 0.2, 0.25, 0.3]:
    fgs[f'rel{rel}'] = dist > (rel * req)[:, None, None, None]
for k, f in fgs.items():
    row = [f'{k}: vox med {np.median(f.sum((1,2,3))):.0f} lesion-in {((les & f).sum() / les.sum()):.2f}']
    ft = torch.from_numpy(f)[:, None]
    for name in ['fused', 'map:inpainting', 'map:jigsaw', 'map:pseudo_anomaly', 'map:pseudo_label']:
        m = c[name].float()
        q = foreground_quantile(m, ft, 0.999)[0].numpy()
        q9 = foreground_quantile(m, ft, 0.99)[0].numpy()
        row.append(f'{name[4:] or name} {roc_auc_score(y, q):.3f}/{roc_auc_score(y, q9):.3f}')
    print(' | '.join(row))
