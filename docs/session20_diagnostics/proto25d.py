"""Prototype: a 2D learner on slices of the 3D training volumes, scoring 3D volumes slice by slice (diagnostic)."""
import sys, json, time, subprocess, torch, numpy as np
from pathlib import Path
sys.path.insert(0, '/tmp/exp20/scripts')
from monai.data import DataLoader
from monai_mtlmad.data import bmad_datalist, make_dataset
from monai_mtlmad.data.demo import _write
from monai_mtlmad.scoring import AnomalyScorer
from monai_mtlmad.transforms.foreground import foreground_mask, foreground_quantile
from monai_mtlmad.metrics import pixel_auroc_anomalous
from sklearn.metrics import roc_auc_score

AX = 2  # slice axis of (B, C, X, Y, Z): index into spatial dims (0-based) -> planes keep axis 0 (egg) and mirrored axis
MODEL3D = Path('/tmp/exp20/runs/hard3d_960/runs/head/5_tasks/seed3/models/model.pt')
DATA3D = Path('/tmp/exp20/runs/hard3d_960/data/head')
OUT = Path(sys.argv[1]); EPOCHS = int(sys.argv[2]); SEED = int(sys.argv[3]) if len(sys.argv) > 3 else 3
RIM = 0.06

def volumes(split, with_mask):
    sc = AnomalyScorer.load(MODEL3D)
    det, _ = sc.preprocessing(with_mask=with_mask)
    ds = make_dataset(bmad_datalist(DATA3D, split, check=False), det, num_workers=0)
    out = {'image': [], 'mask': [], 'label': []}
    for b in (ds[i] for i in range(len(ds))):
        b = {k: (v[None] if k in ('image', 'mask') else torch.as_tensor([v])) for k, v in b.items() if k in ('image', 'mask', 'label') and v is not None}
        out['image'].append(torch.as_tensor(b['image']))
        if with_mask:
            out['mask'].append(torch.as_tensor(b['mask']) > 0); out['label'].append(torch.as_tensor(b['label']).reshape(-1))
    return {k: torch.cat(v) for k, v in out.items() if v}

def slices(vol):  # (C, X, Y, Z) -> (Y, C, X, Z) along spatial axis AX
    return vol.movedim(1 + AX, 0)

def write_slices():
    data = OUT / 'data'
    if data.exists():
        return data
    tr = volumes('train', False)['image']
    va = volumes('valid', True)
    n = 0
    for v_i, v in enumerate(tr):
        body = foreground_mask(v[None], 0.0)[0]
        area = slices(body).flatten(1).sum(1); big = area >= 0.3 * area.max()
        for j, (s, b) in enumerate(zip(slices(v), big)):
            if b:
                _write(data / 'train/good/img' / f'v{v_i:03d}_s{j:02d}.png', s[0].numpy(), 2); n += 1
    for v_i, (v, m, y) in enumerate(zip(va['image'], va['mask'], va['label'])):
        body = foreground_mask(v[None], 0.0)[0]
        area = slices(body).flatten(1).sum(1); big = area >= 0.3 * area.max()
        for j, (s, b, ms) in enumerate(zip(slices(v), big, slices(m))):
            if not b:
                continue
            if y == 0:
                _write(data / 'valid/good/img' / f'v{v_i:03d}_s{j:02d}.png', s[0].numpy(), 2)
            elif ms.any():
                _write(data / 'valid/Ungood/img' / f'v{v_i:03d}_s{j:02d}.png', s[0].numpy(), 2)
                _write(data / 'valid/Ungood/anomaly_mask' / f'v{v_i:03d}_s{j:02d}.png', ms[0].float().numpy(), 2, mask=True)
    for split in ('test',):  # the bundle evaluates nothing here; a test split keeps bmad_datalist happy
        (data / split / 'good' / 'img').mkdir(parents=True, exist_ok=True)
    print('training slices', n, flush=True)
    return data

def train(data):
    out = OUT / 'run'
    model = out / 'models' / 'model.pt'
    if model.exists():
        return model
    t = time.time()
    cmd = [sys.executable, '-W', 'ignore', '-m', 'monai.bundle', 'run', '--bundle_root', '/tmp/exp20/bundle',
           '--config_file', '/tmp/exp20/bundle/configs/train.json', '--dataset_dir', str(data), '--output_dir', str(out),
           '--max_epochs', str(EPOCHS), '--val_interval', str(EPOCHS), '--seed', str(SEED), '--spatial_dims', '2',
           '--image_size', '48', '--rim', str(RIM), '--map_weights', 'selected', '--overwrite', 'true', '--batch_size', '8']
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        print(r.stderr[-4000:]); sys.exit(1)
    print('train seconds', round(time.time() - t), flush=True)
    return model

def score(model, cache):
    c = torch.load(cache, weights_only=False)
    imgs = torch.load(cache + '.images.pt', weights_only=False)
    y, les = c['label'], c['mask'].as_tensor().bool()
    sc = AnomalyScorer.load(model); sc.student = None
    # the 2D loader's view of a written slice must equal the tensor: same orientation and scale
    det, _ = sc.preprocessing(with_mask=False)
    tmp = OUT / 'check.png'; s0 = slices(imgs[0])[24]; _write(tmp, s0[0].numpy(), 2)
    back = torch.as_tensor(det({'image': str(tmp)})['image'])
    q = ((s0.clamp(0, 1) * 255).round() / 255).transpose(-1, -2)
    print('loader check max diff', float((back - q).abs().max()), tuple(back.shape), flush=True)
    fused, tmaps, vscores, sl_scores = [], {}, {}, []
    t = time.time()
    with torch.no_grad():
        for v in imgs:
            fg3 = foreground_mask(v[None], RIM)[0]
            # as the 2D loader reads a written slice: transposed (MONAI's PNG reader puts width first)
            x = ((slices(v).clamp(0, 1) * 255).round() / 255).transpose(-1, -2)
            f = slices(fg3).transpose(-1, -2)
            keep = f.flatten(1).any(1)
            res = sc.score(x[keep], foreground=f[keep])
            vm = torch.zeros_like(x); vm[keep] = res.map.float()
            low = vm[keep].min() if keep.any() else 0
            vm = torch.where(f, vm, low)
            fused.append(vm.transpose(-1, -2).movedim(0, AX + 1))
            for k, m in res.task_maps.items():
                tm = torch.full_like(x, float(m.min())); tm[keep] = m.float(); tmaps.setdefault(k, []).append(tm.transpose(-1, -2).movedim(0, AX + 1))
            for k, s in res.image_scores.items():
                vscores.setdefault('slice max ' + k, []).append(s.max()); vscores.setdefault('slice top3 mean ' + k, []).append(s.topk(min(3, len(s))).values.mean())
            for k, s in res.task_scores.items():
                vscores.setdefault('slice max task ' + k, []).append(s.max())
    print('score seconds', round(time.time() - t), flush=True)
    fused = torch.stack(fused); fg = c['fg'].bool()
    res = {}
    res['volume q99.9 of fused map'] = roc_auc_score(y, foreground_quantile(fused, fg, 0.999)[0])
    res['volume q99 of fused map'] = roc_auc_score(y, foreground_quantile(fused, fg, 0.99)[0])
    for k, v in tmaps.items():
        res[f'volume q99.9 of {k} map'] = roc_auc_score(y, foreground_quantile(torch.stack(v), fg, 0.999)[0])
    for k, v in vscores.items():
        res[k] = roc_auc_score(y, torch.stack(v))
    res['trivial foreground fraction'] = roc_auc_score(y, fg.float().flatten(1).mean(1))
    pix = {'fused map': pixel_auroc_anomalous(fused, les, y, fg)}
    for k, v in tmaps.items():
        pix[f'{k} map'] = pixel_auroc_anomalous(torch.stack(v), les, y, fg)
    pix = {k: float(v) for k, v in pix.items()}
    return {'image': res, 'pixel inside lesion volumes': pix}

if __name__ == '__main__':
    torch.set_num_threads(2)
    data = write_slices(); model = train(data)
    from lesion_scale_image_study import test_images
    pc = '/tmp/exp20/cache_p960/head_seed3_test192.pt.images.pt'
    if not Path(pc).exists():
        torch.save(test_images(Path('/tmp/exp20/p960'), 'head', 3, '5_tasks', 192), pc)
    r = {}
    for name, cache in [('head_test192', '/tmp/exp20/cache_960/head_seed3_test192.pt')] + ([('paired', '/tmp/exp20/cache_p960/head_seed3_test192.pt')] if Path('/tmp/exp20/cache_p960/head_seed3_test192.pt.images.pt').exists() else []):
        r[name] = score(model, cache)
        print(name, json.dumps(r[name], indent=1), flush=True)
    (OUT / 'result.json').write_text(json.dumps(r, indent=1))
