import torch, numpy as np, matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot as plt
c = torch.load('/tmp/exp20/cache_960/head_seed3_test192.pt', weights_only=False)
imgs = torch.load('/tmp/exp20/cache_960/head_seed3_test192.pt.images.pt', weights_only=False)
y = c['label'].numpy(); n0 = int((y == 0).sum())
contrast = (0.35 + 0.65 * torch.rand(96, generator=torch.Generator().manual_seed(301 + 104729))).numpy()
tum = [i for i in range(96) if i % 4 == 0 and contrast[i] > 0.8][:3]
norm = [0, 1, 2]
rows = [(n0 + i, f'tumour {i} c={contrast[i]:.2f}') for i in tum] + [(i, f'normal {i}') for i in norm]
fig, ax = plt.subplots(len(rows), 5, figsize=(15, 3 * len(rows)))
for r, (i, title) in enumerate(rows):
    m = c['mask'].as_tensor()[i, 0]; fg = c['fg'][i, 0]
    fused = c['fused'][i, 0].float(); pa = c['map:pseudo_anomaly'][i, 0].float(); inp = c['map:inpainting'][i, 0].float()
    if m.any():
        z = int(m.sum((0, 1)).argmax())
    else:
        z = int(torch.where(fg, fused, fused.min()).flatten().argmax()) % 48
    # where the volume's top fused values lie
    top = torch.where(fg, fused, torch.tensor(-1e9)).flatten().topk(5).indices
    tz = [int(t) % 48 for t in top]
    for a, (im, t) in zip(ax[r], [(imgs[i, 0, :, :, z], f'{title} z={z}'), (fused[:, :, z], f'fused (top5 z {tz})'), (pa[:, :, z], 'pseudo_anomaly'), (inp[:, :, z], 'inpainting'), (m[:, :, z].float() + 0.5 * fg[:, :, z].float(), 'mask + fg')]):
        h = a.imshow(im.numpy(), cmap='gray' if 'mask' in t or 'tumour' in t or 'normal' in t else 'magma'); a.set_title(t, fontsize=8); a.axis('off'); plt.colorbar(h, ax=a, fraction=0.04)
plt.tight_layout(); plt.savefig('/tmp/exp21/look.png', dpi=60)
