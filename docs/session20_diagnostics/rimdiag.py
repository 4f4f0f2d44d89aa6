import torch, numpy as np, sys
from scipy import ndimage
from monai_mtlmad.transforms.foreground import foreground_mask
from monai_mtlmad.metrics import pixel_auroc_anomalous
c = torch.load(sys.argv[1], weights_only=False); imgs = torch.load(sys.argv[1] + '.images.pt', weights_only=False)
y = c['label']; les = c['mask'].as_tensor().bool(); fg0 = c['fg'].bool()
print('fused outside fg constant per image?', bool(all(c['fused'][i][~fg0[i]].float().std() == 0 for i in range(5))))
w = c['map_weights']; print('map weights', w)
mix = sum(w[k] * c['map:' + k].float() for k in w if w[k]) / sum(v for v in w.values() if v)
body = foreground_mask(imgs, 0.0)
dist = torch.from_numpy(np.stack([ndimage.distance_transform_edt(b[0]) for b in body.numpy()]))[:, None]
req = (3 * body.flatten(1).sum(1).float() / (4 * np.pi)) ** (1 / 3)
fgs = {'today': fg0}
for rel in [0.1, 0.15, 0.2, 0.25]:
    fgs[f'rel{rel}'] = dist > (rel * req).view(-1, 1, 1, 1, 1)
for k, f in fgs.items():
    low = mix.flatten(1).min(1).values.view(-1, 1, 1, 1, 1)
    m = torch.where(f, mix, low)
    print(k, 'lesion in', round(float((les & f).sum() / les.sum()), 3), 'fg vox', int(f.flatten(1).sum(1).median()),
          'AUROC in own fg', round(pixel_auroc_anomalous(m, les, y, f), 3), 'over whole body', round(pixel_auroc_anomalous(m, les & body, y, body), 3))
