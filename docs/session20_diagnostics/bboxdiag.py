import torch, numpy as np, sys
from monai_mtlmad.transforms.foreground import foreground_mask
from monai_mtlmad.metrics import pixel_auroc_anomalous
c = torch.load(sys.argv[1], weights_only=False); imgs = torch.load(sys.argv[1] + '.images.pt', weights_only=False)
y = c['label']; les = c['mask'].as_tensor().bool(); fg0 = c['fg'].bool()
w = c['map_weights']
mix = sum(w[k] * c['map:' + k].float() for k in w if w[k]) / sum(v for v in w.values() if v)
body = foreground_mask(imgs, 0.0)
def bbox_rel(rim):
    out = []
    for i in range(len(imgs)):
        b = body[i, 0]; ext = [int(a.max() - a.min() + 1) for a in torch.where(b)]
        out.append(foreground_mask(imgs[i:i + 1], rim * min(ext) / 48))
    return torch.cat(out)
body_fg = body
for name, f in (('today', fg0), ('bbox 0.06', bbox_rel(0.06)), ('bbox 0.08', bbox_rel(0.08))):
    low = mix.flatten(1).min(1).values.view(-1, 1, 1, 1, 1)
    m = torch.where(f, mix, low)
    brain_share = None
    print(name, 'lesion in', round(float((les & f).sum() / les.sum()), 3), 'fg vox', int(f.flatten(1).sum(1).median()),
          'in own fg', round(pixel_auroc_anomalous(m, les, y, f), 3), 'whole head', round(pixel_auroc_anomalous(m, les & body, y, body), 3))
