import torch, numpy as np, sys
from sklearn.metrics import roc_auc_score
c = torch.load(sys.argv[1], weights_only=False)
y = c['label'].numpy(); n_sick = int(y.sum()); assert (y[:len(y) - n_sick] == 0).all()
K = ['nodule', 'ground_glass', 'pleural_mass', 'consolidation']
kinds = np.array(K)[np.arange(n_sick) % 4]
contrast = (0.4 + 0.6 * torch.rand(n_sick, generator=torch.Generator().manual_seed(201 + 104729))).numpy()
area = c['mask'].as_tensor().flatten(1).sum(1).numpy()[y == 1]
print('lesion px median by kind', {k: int(np.median(area[kinds == k])) for k in K})
names = {'default': c['score:synthetic'], 'map_quantile': c['score:map_quantile']}
for i, n in enumerate(c['feature_names']):
    names[n] = c['features'][:, i]
names['trivial fg'] = c['fg'].float().flatten(1).mean(1)
def auc(s, sel):
    s = np.asarray(s, float); p = s[y == 1][sel]; n = s[y == 0]
    return roc_auc_score(np.r_[np.zeros(len(n)), np.ones(len(p))], np.r_[n, p])
for name, s in names.items():
    row = [f'{name:20s} all {roc_auc_score(y, np.asarray(s, float)):.3f}']
    row += [f'{k[:6]} {auc(s, kinds == k):.2f}' for k in K]
    row += [f'c{lo:.1f} {auc(s, (contrast >= lo) & (contrast < hi)):.2f}' for lo, hi in [(0.4, 0.6), (0.6, 0.8), (0.8, 1.01)]]
    print(' | '.join(row))
from monai_mtlmad.transforms.foreground import foreground_quantile
fg = c['fg'].bool()
print('fg px median', int(fg.flatten(1).sum(1).median()))
for key in ['fused', 'map:pseudo_anomaly', 'map:pseudo_label']:
    m = c[key].float()
    for q in [0.99, 0.995, 0.999, 1.0]:
        s = foreground_quantile(m, fg, q)[0].numpy() if q < 1 else torch.where(fg, m, m.min()).flatten(1).max(1).values.numpy()
        print(f'{key:20s} q{q}', f'all {roc_auc_score(y, s):.3f}', ' '.join(f'{k[:6]} {auc(s, kinds == k):.2f}' for k in K))
