import nibabel as nib, numpy as np, glob, sys
from scipy import ndimage as ndi
from sklearn.metrics import roc_auc_score
root = sys.argv[1]
kinds=['tumour','infarct','bleed','edema']
def load(p): return nib.load(p).get_fdata().astype(np.float32)
rows=[]
for split,lab in (('good',0),('Ungood',1)):
    for i,f in enumerate(sorted(glob.glob(f'{root}/test/{split}/img/*.nii.gz'))):
        x=load(f)
        head=ndi.binary_fill_holes(x>0.05)
        d=ndi.distance_transform_edt(head)
        res=np.abs(x-ndi.median_filter(x,5))  # one residual per volume, read at three depths
        feats=[]
        for frac in (0.2,0.3,0.4):
            fg=d>frac*d.max()
            feats += [np.quantile(res[fg],0.999), np.quantile(x[fg],0.999)]
        rows.append((lab, kinds[i%4] if lab else 'n', *feats))
lab=np.array([r[0] for r in rows]); k=np.array([r[1] for r in rows])
names=[f'{n} core>{f}' for f in (0.2,0.3,0.4) for n in ('median resid q99.9','intensity q99.9')]
for j,name in enumerate(names,start=2):
    s=np.array([r[j] for r in rows])
    out=[f'{roc_auc_score(lab,s):.3f}']
    for kk in kinds:
        sel=(k=='n')|(k==kk); out.append(f'{kk} {roc_auc_score(lab[sel],s[sel]):.2f}')
    print(name, *out)
