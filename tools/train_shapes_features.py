"""Train the Shapes feature extractor and write its weights, real statistics and model card.

    python tools/train_shapes_features.py [--seed 0] [--steps 3000] [--batch-size 240]
                                          [--threads 2] [--out-dir components/benchmarks/weights]
                                          [--work-dir work_dirs/shapes_features]

Reproducible from ``--seed``: two runs on one machine and thread count log identical losses.
The shipped run took 452 s of CPU time with ``--threads 1`` (505 s wall on a shared machine);
with 2 free cores a step takes about 0.1 s, about 5 minutes for the 3000 steps. On a machine
shared with other jobs use ``--threads 1``: descheduled threads spin at OpenMP barriers, and
at a load average of 4 two threads took 1.5 s per step against 0.17 s for one.

Training data (freshly rendered, never repeated): each batch is one third each of

* ``ShapesImageDataset(split='train', task='c2i', seed=1000 + seed)`` items (single objects),
* ``ShapesImageDataset(split='train', task='t2i', seed=1000 + seed)`` items (kind-balanced
  single/count/binding/position layouts),
* free layouts: 0-5 objects of any colour-shape pair in random distinct cells (sizes and
  jitter as in the benchmark), so held-out pair compositions, empty images and too many
  objects -- what a bad generator draws -- are covered too.

The reference images of the statistics use seed 0, so none is a training image. A fraction
``--corrupt-prob`` of the images is degraded with a random corruption of random severity
(``corrupt_images``); the targets of the quality heads say which one. The targets of the
attribute heads are the clean image's (see :mod:`vargo.components.benchmarks.shapes_features`).

Outputs: ``<out-dir>/shapes_features.safetensors`` (weights, float32),
``<out-dir>/shapes_real_stats.npz`` (FID statistics of 10,000 reference images per task and
split, with the weights' SHA-256), ``<out-dir>/shapes_features.md`` (the model card: command,
seed, steps, time, losses, held-out accuracies, FIDs, all measured in this run), and
``<work-dir>/loss_log.jsonl`` (one line per logged step).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault('HF_HUB_OFFLINE', '1')

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_SEED_OFFSET = 1000
#: probabilities of 0..5 objects in a free layout
FREE_COUNT_PROBS = (0.1, 0.2, 0.2, 0.2, 0.15, 0.15)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--seed', type=int, default=0, help='seed of the weights and of the data')
    p.add_argument('--steps', type=int, default=3000)
    p.add_argument('--batch-size', type=int, default=240, help='a multiple of 3')
    p.add_argument('--lr', type=float, default=3e-3)
    p.add_argument('--corrupt-prob', type=float, default=0.4)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--eval-samples', type=int, default=3000,
                   help='held-out images per source for the accuracies')
    p.add_argument('--out-dir', default=os.path.join(ROOT, 'components', 'benchmarks',
                                                     'weights'))
    p.add_argument('--work-dir', default=os.path.join(ROOT, 'work_dirs', 'shapes_features'))
    p.add_argument('--log-interval', type=int, default=50)
    args = p.parse_args(argv)
    if args.batch_size < 3 or args.batch_size % 3:
        p.error(f'--batch-size={args.batch_size} must be a positive multiple of 3 (three '
                f'sources per batch)')
    if args.steps < 1:
        p.error(f'--steps={args.steps} must be >= 1')
    if not 0 <= args.corrupt_prob <= 1:
        p.error(f'--corrupt-prob={args.corrupt_prob} must be in [0, 1]')
    return args


# ---- data --------------------------------------------------------------------------------------
def free_layout(rng: np.random.Generator):
    """0-5 objects of random pairs in random distinct cells, benchmark sizes and jitter."""
    from vargo.components.datasets.shapes import (CELL_ORIGINS, CELL_SIZE, COLOURS, GRID,
                                                  SHAPES, SIZES, Placement)
    n = int(rng.choice(len(FREE_COUNT_PROBS), p=FREE_COUNT_PROBS))
    cells = rng.permutation(GRID * GRID)[:n]
    sizes = sorted(SIZES.values())
    out = []
    for cell in cells:
        size = sizes[int(rng.integers(len(sizes)))]
        dy, dx = rng.integers(0, CELL_SIZE - size + 1, size=2)
        row, col = divmod(int(cell), GRID)
        out.append(Placement(COLOURS[int(rng.integers(len(COLOURS)))],
                             SHAPES[int(rng.integers(len(SHAPES)))], size,
                             CELL_ORIGINS[row] + int(dy), CELL_ORIGINS[col] + int(dx), int(cell)))
    return tuple(out)


def collate(layouts) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Rasterise placements and stack their attribute targets."""
    from vargo.components.benchmarks.shapes_features import attribute_targets
    from vargo.components.datasets.shapes import rasterize
    images = np.stack([rasterize(p).transpose(2, 0, 1) for p in layouts])       # [B, 3, H, W]
    targets = [attribute_targets(p) for p in layouts]
    batch = {k: torch.from_numpy(np.stack([t[k] for t in targets])) for k in targets[0]}
    return torch.from_numpy(np.ascontiguousarray(images)), batch


class Stream:
    """A deterministic stream of layouts, ``n_per_source`` per source at most: dataset items
    in index order and free layouts from ``default_rng((seed, free_rng_key))``."""

    def __init__(self, split: str, seed: int, n_per_source: int, free_rng_key: int):
        from vargo.components.benchmarks.shapes_features import item_placements
        from vargo.components.datasets.shapes import ShapesImageDataset
        self._item = item_placements
        self.c2i = ShapesImageDataset(split=split, task='c2i', num_samples=n_per_source,
                                      seed=seed)
        self.t2i = ShapesImageDataset(split=split, task='t2i', num_samples=n_per_source,
                                      seed=seed)
        self.rng = np.random.default_rng((seed, free_rng_key))
        self.pos = 0

    def next(self, per_source: int):
        i0, self.pos = self.pos, self.pos + per_source
        return ([self._item(self.c2i, i) for i in range(i0, i0 + per_source)],
                [self._item(self.t2i, i) for i in range(i0, i0 + per_source)],
                [free_layout(self.rng) for _ in range(per_source)])


def apply_corruptions(images, prob: float, gen: torch.Generator):
    """Corrupt a random fraction of a batch; returns images, class [B] and severity [B]."""
    from vargo.components.benchmarks.shapes_features import CORRUPTIONS, corrupt_images
    b = len(images)
    hit = torch.rand(b, generator=gen) < prob
    kind = torch.where(hit, torch.randint(1, len(CORRUPTIONS), (b,), generator=gen), 0)
    severity = torch.where(hit, torch.rand(b, generator=gen), 0.0)
    out = images.clone()
    for k in range(1, len(CORRUPTIONS)):
        idx = (kind == k).nonzero().reshape(-1)
        if len(idx):
            out[idx] = corrupt_images(images[idx], CORRUPTIONS[k], severity[idx], gen)
    return out, kind, severity


# ---- loss and accuracy -------------------------------------------------------------------------
LOSS_WEIGHTS = dict(presence=1.0, count=1.0, cell_colour=1.0, cell_shape=1.0, size=0.5,
                    offset=0.5, corruption=1.0, severity=1.0)


def losses(heads: dict, t: dict) -> dict[str, torch.Tensor]:
    """Per-image losses, summed over each head's groups (labels, cells) and averaged over the
    batch: a mean over groups would give each cell 1/9 and each presence label 1/18 of the
    weight of the single-group heads, and the trunk would learn where objects are long before
    which objects they are."""
    b = len(t['count'])
    occ = t['occupied'].float()                                                  # [B, 9]
    off = F.smooth_l1_loss(heads['offset'], t['offset'], reduction='none').sum(-1)  # [B, 9]
    ce = F.cross_entropy
    return dict(
        presence=F.binary_cross_entropy_with_logits(heads['presence'], t['presence'],
                                                    reduction='sum') / b,
        count=ce(heads['count'], t['count']),
        cell_colour=ce(heads['cell_colour'].flatten(0, 1), t['cell_colour'].flatten(),
                       reduction='sum') / b,
        cell_shape=ce(heads['cell_shape'].flatten(0, 1), t['cell_shape'].flatten(),
                      reduction='sum') / b,
        size=ce(heads['size'].flatten(0, 1), t['size'].flatten(), reduction='sum') / b,
        offset=(off * occ).sum() / b,
        corruption=ce(heads['corruption'], t['corruption']),
        severity=F.mse_loss(heads['severity'], t['severity']),
    )


@torch.no_grad()
def accuracies(net, images, t) -> dict[str, float]:
    _, h = net(images)
    occ = t['occupied']
    pres = (h['presence'] > 0).float() == t['presence']
    cell = ((h['cell_colour'].argmax(-1) == t['cell_colour'])
            & (h['cell_shape'].argmax(-1) == t['cell_shape']))                  # [B, 9]
    off_err = (h['offset'] - t['offset']).abs().sum(-1)                          # [B, 9]
    return dict(
        presence_label=pres.float().mean().item(),
        presence_image=pres.all(1).float().mean().item(),
        count=(h['count'].argmax(-1) == t['count']).float().mean().item(),
        cell=cell.float().mean().item(),
        cell_image=cell.all(1).float().mean().item(),
        size=(h['size'].argmax(-1) == t['size']).float().mean().item(),
        offset_mae_px=((off_err * occ).sum() / occ.sum().clamp(min=1)).item() / 2,
    )


@torch.no_grad()
def normalise_feature_scale(net) -> float:
    """Rescale the features to mean square 1 on real 'train' images, logits unchanged.

    The features are ``relu(embed(h))``, positively homogeneous in ``embed``: multiplying its
    weight and bias by ``c`` multiplies the features by ``c``, and dividing the heads' weight by
    ``c`` leaves every logit as it was. Unit scale keeps KID's polynomial kernel
    ``(x . y / d + 1) ** 3`` at O(1) inner products (as with Inception features) instead of
    raw magnitudes that blow KID up to 1e5.

    Returns:
        the factor ``c`` applied.
    """
    from vargo.components.benchmarks import shapes_features as sf
    images = torch.cat([sf.reference_images(task, 'train', 2000) for task in sf.TASKS])
    c = float(net.features(images).square().mean().rsqrt())
    net.embed.weight.mul_(c)
    net.embed.bias.mul_(c)
    net.heads.weight.div_(c)
    return c


#: the held-out accuracy images: 'eval' split, seed 0 (the eval reference images)
EVAL_SEED = 0


def held_out_accuracies(net, n: int):
    """Accuracies on ``n`` clean held-out images per source, and on corrupted t2i images.

    Returns:
        ``({source: accuracies}, accuracies on 80% corrupted t2i images, corruption class
        accuracy, severity MAE)``.
    """
    c2i, t2i, free = Stream('eval', EVAL_SEED, n, free_rng_key=2).next(n)
    acc = {name: accuracies(net, *collate(lay))
           for name, lay in (('c2i eval', c2i), ('t2i eval', t2i), ('free layouts', free))}
    images, t = collate(t2i)
    cimages, ckind, csev = apply_corruptions(images, 0.8, torch.Generator().manual_seed(12345))
    with torch.no_grad():
        _, h = net(cimages)
    corr_acc = (h['corruption'].argmax(-1) == ckind).float().mean().item()
    sev_mae = (h['severity'] - csev).abs().mean().item()
    return acc, accuracies(net, cimages, t), corr_acc, sev_mae


def write_real_statistics(path: str, weights_path: str) -> dict[str, np.ndarray]:
    """FID statistics of the reference images of every (task, split), written to ``path``."""
    from vargo.components.benchmarks import shapes_features as sf
    stats = {}
    for task in sf.TASKS:
        for split in sf.REFERENCE_SPLITS:
            images = sf.reference_images(task, split, sf.REFERENCE_NUM_SAMPLES)
            mu, sigma = sf.compute_statistics(images, weights_path=weights_path)
            stats[f'{task}_{split}_mu'], stats[f'{task}_{split}_sigma'] = mu, sigma
    np.savez_compressed(path, weights_sha256=np.array(sf.weights_sha256(weights_path)),
                        reference_seed=np.int64(sf.REFERENCE_SEED),
                        num_samples=np.int64(sf.REFERENCE_NUM_SAMPLES), **stats)
    return stats


def card_fids(stats: dict, weights_path: str) -> dict[str, float]:
    """The FIDs of the model card: real vs real at 10k, 2000 and 500 images, and real vs
    corrupted, single-object, and black images."""
    from vargo.components.benchmarks import shapes_features as sf
    from vargo.components.datasets.shapes import ShapesImageDataset

    def ref(task, split):
        return stats[f'{task}_{split}_mu'], stats[f'{task}_{split}_sigma']

    def fid_vs(task, split, images):
        return sf.frechet_distance(*sf.compute_statistics(images, weights_path=weights_path),
                                   *ref(task, split))

    def fid_pair(a, b):
        return sf.frechet_distance(*sf.compute_statistics(a, weights_path=weights_path),
                                   *sf.compute_statistics(b, weights_path=weights_path))

    def images_of(split, task, n, seed):
        ds = ShapesImageDataset(split=split, task=task, num_samples=n, seed=seed)
        return torch.stack([ds[i]['image'] for i in range(n)])

    fids = {f'{task} train (10k) vs {task} eval (10k)':
            sf.frechet_distance(*ref(task, 'train'), *ref(task, 'eval')) for task in sf.TASKS}
    fids['c2i eval (10k) vs t2i eval (10k)'] = sf.frechet_distance(*ref('c2i', 'eval'),
                                                                   *ref('t2i', 'eval'))
    c2i_f, t2i_f, _ = Stream('eval', 777, 2000, free_rng_key=3).next(2000)
    c2i_imgs, t2i_imgs = collate(c2i_f)[0], collate(t2i_f)[0]
    fids['2000 fresh c2i eval images (seed 777) vs c2i eval stats'] = fid_vs('c2i', 'eval',
                                                                             c2i_imgs)
    fids['2000 fresh t2i eval images (seed 777) vs t2i eval stats'] = fid_vs('t2i', 'eval',
                                                                             t2i_imgs)
    sev = torch.full((len(t2i_imgs),), 0.5)
    for kind in sf.CORRUPTIONS[1:]:
        fids[f'same 2000 t2i images, {kind} (severity 0.5) vs t2i eval stats'] = fid_vs(
            't2i', 'eval', sf.corrupt_images(t2i_imgs, kind, sev,
                                             torch.Generator().manual_seed(0)))
    # the pairs of tests/test_shapes_features.py: independent real sets of one distribution
    c2i_a, c2i_b = images_of('train', 'c2i', 500, 11), images_of('eval', 'c2i', 500, 12)
    t2i_a, t2i_b = images_of('train', 't2i', 500, 11), images_of('train', 't2i', 500, 12)
    fids['500 c2i train (seed 11) vs 500 c2i eval (seed 12) images'] = fid_pair(c2i_a, c2i_b)
    fids['500 t2i train (seed 11) vs 500 t2i train (seed 12) images'] = fid_pair(t2i_a, t2i_b)
    fids['500 c2i train (seed 11) vs 500 t2i train (seed 12) images'] = fid_pair(c2i_a, t2i_b)
    fids['500 t2i (seed 11) blurred (severity 0.5) vs 500 t2i (seed 12) images'] = fid_pair(
        sf.corrupt_images(t2i_a, 'blur', torch.full((500,), 0.5)), t2i_b)
    fids['500 black images vs 500 t2i (seed 12) images'] = fid_pair(
        torch.zeros(500, 3, 32, 32), t2i_b)
    fids['2000 black images vs t2i eval stats'] = fid_vs('t2i', 'eval',
                                                         torch.zeros(2000, 3, 32, 32))
    return fids


# ---- main --------------------------------------------------------------------------------------
def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    # mostly-black images drive activations and gradients into denormals, 5-10x slower on CPU
    torch.set_flush_denormal(True)
    from safetensors.torch import save_file
    from tqdm import tqdm

    from vargo.components.benchmarks import shapes_features as sf

    torch.manual_seed(args.seed)
    os.makedirs(args.out_dir, exist_ok=True)
    os.makedirs(args.work_dir, exist_ok=True)
    t_start, cpu_start, load_start = time.time(), time.process_time(), os.getloadavg()[0]
    net = sf.ShapesFeatureNet().to(memory_format=torch.channels_last)   # ~20% faster convs
    n_params = sum(p.numel() for p in net.parameters())
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    warmup = min(100, args.steps // 10 + 1)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup)
        * 0.5 * (1 + np.cos(np.pi * min(s, args.steps) / args.steps)))
    per = args.batch_size // 3
    stream = Stream('train', DATA_SEED_OFFSET + args.seed, per * args.steps, free_rng_key=1)
    gen = torch.Generator().manual_seed(args.seed)
    log_path = os.path.join(args.work_dir, 'loss_log.jsonl')
    log, running = [], {}
    net.train()
    with open(log_path, 'w') as log_file, tqdm(total=args.steps, desc='train', unit='step') as bar:
        for step in range(1, args.steps + 1):
            c2i, t2i, free = stream.next(per)
            images, t = collate(c2i + t2i + free)
            images, t['corruption'], t['severity'] = apply_corruptions(images,
                                                                       args.corrupt_prob, gen)
            _, heads = net(images.contiguous(memory_format=torch.channels_last))
            parts = losses(heads, t)
            loss = sum(LOSS_WEIGHTS[k] * v for k, v in parts.items())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            for k, v in dict(parts, loss=loss.detach()).items():
                running[k] = running.get(k, 0.0) + v.item()
            if step % args.log_interval == 0 or step == args.steps:
                n = args.log_interval if step % args.log_interval == 0 else step % args.log_interval
                rec = dict(step=step, lr=sched.get_last_lr()[0],
                           time=round(time.time() - t_start, 1),
                           **{k: round(v / n, 5) for k, v in running.items()})
                running = {}
                log.append(rec)
                log_file.write(json.dumps(rec) + '\n')
                log_file.flush()
                bar.set_postfix(loss=f'{rec["loss"]:.4f}', presence=f'{rec["presence"]:.4f}')
            bar.update(1)
    train_time = time.time() - t_start
    train_cpu = time.process_time() - cpu_start
    load_end = os.getloadavg()[0]
    net.eval()
    feature_scale = normalise_feature_scale(net)

    weights_path = os.path.join(args.out_dir, 'shapes_features.safetensors')
    meta = dict(format=sf.WEIGHTS_FORMAT, seed=str(args.seed), steps=str(args.steps),
                batch_size=str(args.batch_size), feature_dim=str(sf.FEATURE_DIM),
                final_loss=f'{log[-1]["loss"]:.5f}', feature_scale=f'{feature_scale:.6g}')
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, weights_path,
              metadata=meta)
    os.chmod(weights_path, 0o644)                       # safetensors writes 0600
    net = sf.load_feature_net(weights_path)             # evaluate exactly what is shipped

    # held-out accuracies: 'eval' split images (disjoint streams and held-out compositions)
    t_eval = time.time()
    acc, acc_corrupted, corr_acc, sev_mae = held_out_accuracies(net, args.eval_samples)
    stats_path = os.path.join(args.out_dir, 'shapes_real_stats.npz')
    stats = write_real_statistics(stats_path, weights_path)
    fids = card_fids(stats, weights_path)
    eval_time = time.time() - t_eval
    total_time = time.time() - t_start

    write_card(os.path.join(args.out_dir, 'shapes_features.md'), args, argv, n_params,
               feature_scale, log,
               train_time, train_cpu, (load_start, load_end), eval_time, total_time, acc,
               acc_corrupted, corr_acc, sev_mae, fids, weights_path, stats_path)
    print(f'wrote {weights_path}, {stats_path} and the model card; training {train_time:.0f} s, '
          f'total {total_time:.0f} s')
    return 0


def write_card(path, args, argv, n_params, feature_scale, log, train_time, train_cpu, loads,
               eval_time, total_time, acc,
               acc_corrupted, corr_acc, sev_mae, fids, weights_path, stats_path):
    from vargo.components.benchmarks import shapes_features as sf
    argv = sys.argv[1:] if argv is None else argv
    cmd = ' '.join(['python tools/train_shapes_features.py', *argv])
    size_kb = {os.path.basename(p): os.path.getsize(p) / 1024 for p in (weights_path, stats_path)}
    last = log[-1]
    lines = [
        '# Shapes feature extractor (`vargo-shapes`)',
        '',
        f'A small CNN that predicts the attributes of Shapes benchmark images; its '
        f'{sf.FEATURE_DIM}-d '
        'penultimate layer is the feature space of FID/KID/precision-recall for the Shapes '
        'benchmark (torch-fidelity extractor `vargo-shapes`, '
        '`vargo.components.benchmarks.shapes_features`). Everything below was measured by the '
        'run that wrote this file.',
        '',
        '## Training',
        '',
        f'- Command: `{cmd}` (torch {torch.__version__}, torch.set_num_threads({args.threads}))',
        f'- Seed {args.seed}; data seed {DATA_SEED_OFFSET + args.seed} (split train); '
        f'{args.steps} steps x batch {args.batch_size} = {args.steps * args.batch_size:,} '
        f'freshly rendered images (1/3 c2i, 1/3 t2i, 1/3 free layouts), '
        f'{args.corrupt_prob:.0%} corrupted',
        f'- AdamW lr {args.lr} (warm-up, cosine), weight decay 1e-4; '
        f'{n_params:,} parameters; features then scaled by {feature_scale:.4g} to mean square 1 '
        f'on real train images (logits unchanged)',
        f'- Training time {train_time:.0f} s wall, {train_cpu:.0f} s process CPU time (all '
        f'threads; 1-min load average {loads[0]:.1f} at the start, {loads[1]:.1f} at the end, '
        f'on {os.cpu_count()} cores: other jobs inflate the wall time); evaluation and '
        f'statistics {eval_time:.0f} s; total {total_time:.0f} s',
        f'- Final loss (mean of the last {args.log_interval} steps): {last["loss"]:.4f} '
        f'(' + ', '.join(f'{k} {last[k]:.4f}' for k in LOSS_WEIGHTS) + ')',
        f'- Loss weights: ' + ', '.join(f'{k} {v}' for k, v in LOSS_WEIGHTS.items()),
        '',
        '| step | loss | ' + ' | '.join(LOSS_WEIGHTS) + ' |',
        '|---:|---:|' + '---:|' * len(LOSS_WEIGHTS),
    ]
    shown = [r for r in log if r['step'] % max(args.steps // 10, 1) == 0 or r is log[0]]
    for r in shown:
        lines.append(f'| {r["step"]} | {r["loss"]:.4f} | ' + ' | '.join(
            f'{r[k]:.4f}' for k in LOSS_WEIGHTS) + ' |')
    lines += [
        '',
        f'## Held-out accuracy ({args.eval_samples} clean images per source)',
        '',
        'c2i/t2i eval: `ShapesImageDataset(split="eval", seed=0)` (t2i eval holds the '
        'compositions of held-out pairs); free layouts: 0-5 random objects. presence_label: '
        'per (colour, shape) label; presence_image: all 18 labels right; cell: per grid cell '
        '(empty, or colour and shape both right); cell_image: all 9 cells right; offset: mean '
        'absolute error of the object centre, px per coordinate.',
        '',
        '| images | presence_label | presence_image | count | cell | cell_image | size | '
        'offset_mae_px |',
        '|---|---:|---:|---:|---:|---:|---:|---:|',
    ]
    for name, a in list(acc.items()) + [('t2i eval, 80% corrupted', acc_corrupted)]:
        lines.append(f'| {name} | ' + ' | '.join(
            f'{a[k]:.4f}' for k in ('presence_label', 'presence_image', 'count', 'cell',
                                    'cell_image', 'size', 'offset_mae_px')) + ' |')
    lines += [
        '',
        f'Corruption class accuracy (t2i eval, 80% corrupted, severity U(0, 1)): '
        f'{corr_acc:.4f}; severity MAE: {sev_mae:.4f}.',
        '',
        f'## FID (features: {sf.FEATURE_DIM}-d penultimate layer)',
        '',
        f'Reference statistics: {sf.REFERENCE_NUM_SAMPLES} images per task and split, '
        f'`ShapesImageDataset(split, task, num_samples={sf.REFERENCE_NUM_SAMPLES}, '
        f'seed={sf.REFERENCE_SEED})`. t2i train and eval are different distributions by design '
        '(held-out pairs appear in eval compositions only).',
        '',
        '| pair | FID |',
        '|---|---:|',
    ]
    lines += [f'| {k} | {v:.4f} |' for k, v in fids.items()]
    lines += [
        '',
        '## Files',
        '',
        f'- `shapes_features.safetensors` ({size_kb["shapes_features.safetensors"]:.0f} KB), '
        f'SHA-256 `{sf.weights_sha256(weights_path)}`',
        f'- `shapes_real_stats.npz` ({size_kb["shapes_real_stats.npz"]:.0f} KB): '
        f'`{{task}}_{{split}}_mu` [{sf.FEATURE_DIM}] float32 and `{{task}}_{{split}}_sigma` '
        f'[{sf.FEATURE_DIM}, {sf.FEATURE_DIM}] float64 for task '
        'in (c2i, t2i), split in (train, eval); `weights_sha256`, `reference_seed`, '
        '`num_samples`',
        '',
    ]
    with open(path, 'w') as f:
        f.write('\n'.join(lines))


if __name__ == '__main__':
    sys.exit(main())
