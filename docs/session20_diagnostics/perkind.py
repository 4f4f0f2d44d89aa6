import torch, numpy as np, sys
from sklearn.metrics import roc_auc_score
c = torch.load(sys.argv[1], weights_only=False)
y = c['label'].numpy(); n_sick = int(y.sum())
assert (y[:len(y) - n_sick] == 0).all()
kinds = np.array(['tumour', 'infarct', 'bleed', 'edema'])[np.arange(n_sick) % 4]
contrast = (0.35 + 0.65 * torch.rand(n_sick, generator=torch.Generator().manual_seed(301 + 104729))).numpy()
vol = c['mask'].as_tensor().flatten(1).sum(1).numpy()[y == 1]
names = {'default': c['score:synthetic'], 'map_quantile': c['score:map_quantile']}
for i, n in enumerate(c['feature_names']):
    names[n] = c['features'][:, i]
neg = lambda s: np.asarray(s)[y == 0]
pos = lambda s: np.asarray(s)[y == 1]
print('lesion voxels by kind', {k: int(np.median(vol[kinds == k])) for k in ['tumour', 'infarct', 'bleed', 'edema']})
for name, s in names.items():
    s = np.asarray(s, dtype=float)
    row = [f'{name:22s} all {roc_auc_score(y, s):.3f}']
    for k in ['tumour', 'infarct', 'bleed', 'edema']:
        p = pos(s)[kinds == k]; row.append(f'{k} {roc_auc_score(np.r_[np.zeros(len(neg(s))), np.ones(len(p))], np.r_[neg(s), p]):.2f}')
    for lo, hi in [(0.35, 0.57), (0.57, 0.78), (0.78, 1.0)]:
        sel = (contrast >= lo) & (contrast < hi); p = pos(s)[sel]
        row.append(f'c{lo:.2f}-{hi:.2f} {roc_auc_score(np.r_[np.zeros(len(neg(s))), np.ones(len(p))], np.r_[neg(s), p]):.2f}')
    print(' | '.join(row))
