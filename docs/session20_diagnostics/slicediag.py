# Is the 3D maps' image failure in the maps or in the volume-level aggregation? Score one slice per volume:
# the lesion's central slice for lesioned volumes, the same relative level for the paired-by-index normal.
import sys, torch, numpy as np
from sklearn.metrics import roc_auc_score
c = torch.load(sys.argv[1], weights_only=False)
y = c['label'].numpy(); fg = c['fg'][:, 0]; m = c['mask'].as_tensor()[:, 0] if hasattr(c['mask'], 'as_tensor') else c['mask'][:, 0]
n0 = int((y == 0).sum()); les = np.where(y == 1)[0]; nor = np.where(y == 0)[0]
maps = {k: c[k][:, 0].float() for k in ('fused', 'map:pseudo_anomaly', 'map:inpainting', 'map:pseudo_label')}
for axis in (0, 1, 2):
    other = tuple(a + 1 for a in range(3) if a != axis)
    zs = {}
    for j, i in enumerate(les):
        prof = m[i].sum(dim=tuple(a for a in range(3) if a != axis)).numpy()
        body = fg[i].sum(dim=tuple(a for a in range(3) if a != axis)).numpy().nonzero()[0]
        z = int(prof.argmax()); zs[i] = z
        rel = (z - body.min()) / max(1, body.max() - body.min())
        bn = fg[nor[j]].sum(dim=tuple(a for a in range(3) if a != axis)).numpy().nonzero()[0]
        zs[nor[j]] = int(round(bn.min() + rel * (bn.max() - bn.min())))
    out = []
    for k, mp in maps.items():
        s_slice, s_vol = [], []
        for i in range(len(y)):
            sl = [slice(None)] * 3; sl[axis] = zs[i]
            v = mp[i][tuple(sl)][fg[i][tuple(sl)]]
            s_slice.append(float(torch.quantile(v, 0.99)) if v.numel() else -1e9)
            s_vol.append(float(torch.quantile(mp[i][fg[i]], 0.999)))
        out.append(f'{k}: slice q99 {roc_auc_score(y, s_slice):.3f} / volume q99.9 {roc_auc_score(y, s_vol):.3f}')
    print('axis', axis, ' | '.join(out))
