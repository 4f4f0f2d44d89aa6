# Is the 3D maps' image failure in the maps or in the volume-level aggregation? Score one slice per volume:
# the lesion's central slice for lesioned volumes, the same relative level for the paired-by-index normal.
import sys, torch, numpy as np
from sklearn.metrics import roc_auc_score
c = torch.load(sys.argv[1], weights_only=False)
y = c['label'].numpy(); fg = c['fg'][:, 0]; m = c['mask'].as_tensor()[:, 0] if hasattr(c['mask'], 'as_tensor') else c['mask'][:, 0]
les = np.where(y == 1)[0]; nor = np.where(y == 0)[0]
maps = {k: c[k][:, 0].float() for k in ('fused', 'map:pseudo_anomaly', 'map:inpainting', 'map:pseudo_label')}
s_vol = {k: [float(torch.quantile(mp[i][fg[i]], 0.999)) for i in range(len(y))] for k, mp in maps.items()}  # axis-free
for axis in (0, 1, 2):
    others = tuple(a for a in range(3) if a != axis)  # profiles along the axis sum over the other two
    zs = {}
    for j, i in enumerate(les):
        prof = m[i].sum(dim=others).numpy()
        body = fg[i].sum(dim=others).numpy().nonzero()[0]
        z = int(prof.argmax()); zs[i] = z
        rel = (z - body.min()) / max(1, body.max() - body.min())
        bn = fg[nor[j]].sum(dim=others).numpy().nonzero()[0]
        zs[nor[j]] = int(round(bn.min() + rel * (bn.max() - bn.min())))
    out = []
    for k, mp in maps.items():
        s_slice = []
        for i in range(len(y)):
            sl = [slice(None)] * 3; sl[axis] = zs[i]
            v = mp[i][tuple(sl)][fg[i][tuple(sl)]]
            s_slice.append(float(torch.quantile(v, 0.99)) if v.numel() else -1e9)
        out.append(f'{k}: slice q99 {roc_auc_score(y, s_slice):.3f} / volume q99.9 {roc_auc_score(y, s_vol[k]):.3f}')
    print('axis', axis, ' | '.join(out))
