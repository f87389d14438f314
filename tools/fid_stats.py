"""Write FID reference statistics (``mu``, ``sigma``) of real images or of a policy's samples.

    # real images: an image folder (png/jpg, recursive) or an image dataset config
    python tools/fid_stats.py images DIR_OR_DATASET_CONFIG --extractor NAME [--weights-path P]
                              [--num N] [--image-size S] --out stats.npz
    # a policy's samples (e.g. the base model: LooFidReward's init_stats_path bootstrap)
    python tools/fid_stats.py samples CONFIG [CHECKPOINT] --extractor NAME [--weights-path P]
                              --num N [--cfg-scale S] [--seed 0] [--per-condition 1] --out stats.npz

The extractor is any torch-fidelity feature extractor (``torch_fidelity.registry.
FEATURE_EXTRACTORS_REGISTRY``, e.g. ``inception-v3-compat``; ``vargo-shapes`` is the Shapes
benchmark's, with shipped weights), called exactly as torch-fidelity calls it: uint8
``[B, 3, H, W]`` images in, the layer ``--layer`` (default: the extractor's layer for FID, e.g.
Inception's 2048-d pool) out. Nothing is ever downloaded: torch-fidelity's own extractors need
``--weights-path`` to a local file, and a missing file is an error naming where it is published
(Inception: torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth``, or pytorch-fid's
``pt_inception-2015-12-05-6726825d.pth``).

Inputs
------
``images``: the real side.

* a directory: every ``.png``/``.jpg``/``.jpeg`` file below it (recursive, sorted by path),
  converted to RGB. Each image reaches the extractor at its own size and the extractor resizes
  it as it expects (torch-fidelity's Inception: 299 px with its TF-compatible bilinear filter;
  ``vargo-shapes``: 32 px). ``--image-size S`` first centre-crops and resizes every image to
  ``S x S`` the way ADM's and LlamaGen's ImageNet reference batches are made (box downsampling
  while the short side is at least 2S, bicubic to short side S, centre crop): use the
  resolution of the generated images (256 for LlamaGen c2i 256).
* a ``.py`` config file with a top-level ``dataset = dict(type=..., ...)`` naming a registered
  image dataset (items are tensors or dicts with an ``'image'`` entry, ``[3, H, W]`` float in
  [0, 1] or uint8), e.g. ``dataset = dict(type='ShapesImageDataset', split='train',
  task='c2i', num_samples=10000)``.

``samples``: ``--num`` samples of the policy of a vargo CONFIG (with CHECKPOINT: the
``policy.*`` weights of a ``tools/train.py`` checkpoint, else the config's base model), drawn
by the config's sampler (``--cfg-scale`` overrides its guidance; LOO-FID bootstraps from samples
at the rollout CFG of its config, 1.5) from the conditions of the config's training dataset in
order (class 0, 1, 2, ... for ImageNet), ``--per-condition`` samples each, cycling until
``--num`` images, with a seeded noise stream (``--seed``; the same seed gives the same images).

Arguments: ``--num`` is an integer >= 2 (a covariance needs 2 images), ``--batch-size``,
``--image-size``, ``--per-condition`` and ``--batch-conditions`` integers >= 1, ``--cfg-scale``
a finite number > 0 (1 = no CFG), CHECKPOINT a torch file written by ``tools/train.py``; a bad
argument is one line ``error: <argument>: ...`` (exit code 2, ``vargo.core.cli``).

Output
------
An ``.npz`` with ``mu [D]``, ``sigma [D, D]`` (unbiased covariance, float64), ``sigma_diagonal
[D]``, ``count`` and ``num`` (number of images), ``extractor`` (its name), ``feature_layer``,
``weights_sha256`` (of the extractor weights file, if one was given) and ``source`` (what was
measured): the format ``vargo.components.metrics.frechet.load_feature_statistics`` reads
(``LooFidReward`` ``real_stats_path`` / ``init_stats_path``) and ``tools/eval.py``'s
``eval_cfg.fidelity.reference_stats``. Extractor, features, statistics and the file are
``vargo.components.metrics.frechet``'s (written atomically by ``save_feature_statistics``).

Examples:
    python tools/fid_stats.py images data/imagenet/train --image-size 256 \\
        --extractor inception-v3-compat \\
        --weights-path checkpoints/inception/pt_inception-2015-12-05-6726825d.pth \\
        --out checkpoints/fid_stats/imagenet_train_inception.npz
    python tools/fid_stats.py samples configs/loo_fid/llamagen-l_loo-fid_c2i.py --num 10000 \\
        --extractor inception-v3-compat \\
        --weights-path checkpoints/inception/pt_inception-2015-12-05-6726825d.pth \\
        --out checkpoints/fid_stats/llamagen-l_c2i_256_cfg1.5_inception.npz
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Iterator, Optional, Sequence

os.environ.setdefault('HF_HUB_OFFLINE', '1')

from vargo.core.cli import (CHECKPOINT_HELP, ArgumentParser, CfgOptionsAction,  # noqa: E402
                            UsageError, cfg_scale, check_cfg_scale, checkpoint_file,
                            existing_path, fail, evaluation_sampler_cfg, int_at_least,
                            load_policy_checkpoint, positive_int)

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg')


# ---- extractors and statistics: vargo.components.metrics.frechet, worded for the command line ----
def build_extractor(name: str, weights_path: Optional[str], layers: Sequence[str]):
    """A torch-fidelity extractor producing ``layers`` (first: the FID layer), eval mode, CPU;
    its weights file (if any) reaches torch-fidelity as a data-only-checked copy
    (:func:`vargo.components.metrics.frechet.build_extractor`)."""
    from vargo.components.metrics.frechet import build_extractor as build
    return build(name, weights_path, layers, cli=True)


def write_statistics(path: str, features, *, extractor: str, feature_layer: str,
                     weights_path: Optional[str], source: str) -> None:
    """Write the statistics of ``[N, D]`` features (``mu``, ``sigma``, ``sigma_diagonal``,
    ``count``) plus ``num``, ``extractor``, ``feature_layer``, ``weights_sha256`` and ``source``,
    atomically (:func:`vargo.components.metrics.frechet.save_feature_statistics`)."""
    import numpy as np
    from vargo.components.metrics.frechet import file_sha256, save_feature_statistics
    path = os.path.expanduser(str(path))
    if os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    save_feature_statistics(
        path, features, num=np.int64(len(features)), extractor=extractor,
        feature_layer=feature_layer, weights_sha256='' if weights_path is None else file_sha256(
            os.path.expanduser(str(weights_path))), source=source)


# ---- real images ---------------------------------------------------------------------------------
def list_image_files(directory: str) -> list[str]:
    files = []
    for root, _, names in os.walk(directory):
        files += [os.path.join(root, n) for n in names if n.lower().endswith(IMAGE_EXTENSIONS)]
    return sorted(files)


def center_crop_resize(img, size: int):
    """ADM / LlamaGen reference-batch preprocessing of a PIL image: box-downsample while the
    short side is >= 2 * size, bicubic to short side ``size``, centre crop ``size x size``."""
    from PIL import Image
    while min(*img.size) >= 2 * size:
        img = img.resize(tuple(x // 2 for x in img.size), resample=Image.BOX)
    scale = size / min(*img.size)
    img = img.resize(tuple(round(x * scale) for x in img.size), resample=Image.BICUBIC)
    left, top = (img.size[0] - size) // 2, (img.size[1] - size) // 2
    return img.crop((left, top, left + size, top + size))


def iter_folder_images(files: Sequence[str], image_size: Optional[int] = None) -> Iterator:
    """``[3, H, W]`` uint8 tensors of image files (RGB)."""
    import numpy as np
    import torch
    from PIL import Image
    for f in files:
        with Image.open(f) as im:
            im = im.convert('RGB')
            if image_size:
                im = center_crop_resize(im, int(image_size))
            yield torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).contiguous()


def _dataset_image(item, where: str):
    import torch
    image = item.get('image') if isinstance(item, dict) else item
    if not torch.is_tensor(image) or image.dim() != 3 or image.shape[0] != 3:
        raise UsageError(f'{where}: items must be [3, H, W] image tensors or dicts with an '
                         f"'image' entry, got {type(item).__name__}"
                         + (f' with keys {sorted(item)}' if isinstance(item, dict) else ''))
    return image


def build_image_dataset(dataset_cfg: dict):
    from mmengine.registry import DefaultScope
    from vargo.core.registry import DATASETS
    import vargo.components  # noqa: F401  (registers the datasets)
    with DefaultScope.overwrite_default_scope('vargo'):
        return DATASETS.build(dict(dataset_cfg))


def dataset_cfg_of_file(path: str) -> dict:
    from mmengine.config import Config
    cfg = Config.fromfile(path)
    if not isinstance(cfg.get('dataset'), dict) or 'type' not in cfg.dataset:
        raise UsageError(f'{path} defines no dataset = dict(type=..., ...): a reference config '
                         f"file names a registered image dataset, e.g. dataset = dict(type="
                         f"'ShapesImageDataset', split='train', task='c2i', num_samples=10000)")
    return cfg.dataset.to_dict()


def check_image_source(source) -> None:
    """Fail early (before sampling) for a reference that cannot exist: a missing folder or
    config file, an empty folder, a dataset config without ``type``."""
    if isinstance(source, dict):
        if 'type' not in source:
            raise UsageError(f'reference images {source!r}: a dataset config needs a type')
        return
    path = os.path.expanduser(str(source))
    if os.path.isdir(path):
        if not list_image_files(path):
            raise UsageError(f'reference image folder {path} holds no {"/".join(IMAGE_EXTENSIONS)} '
                             f'files')
        return
    if os.path.isfile(path) and path.endswith('.py'):
        dataset_cfg_of_file(path)
        return
    raise FileNotFoundError(f'reference images not found: {path} is neither an image folder nor '
                            f'a .py config file with dataset = dict(type=...)')


def image_source(source, *, num: Optional[int] = None, image_size: Optional[int] = None
                 ) -> tuple[int, Iterator, str]:
    """``(count, iterator of [3, H, W] images, description)`` of an image folder, a ``.py``
    dataset config file, or a dataset config dict; the first ``num`` images if given."""
    check_image_source(source)
    if isinstance(source, dict) or str(source).endswith('.py'):
        cfg = source if isinstance(source, dict) else dataset_cfg_of_file(
            os.path.expanduser(str(source)))
        ds = build_image_dataset(cfg)
        n = len(ds) if num is None else min(num, len(ds))
        where = f'dataset {cfg}'
        if image_size:
            raise UsageError('--image-size applies to image folders; a dataset gives its images '
                             'at its own resolution')
        return n, (_dataset_image(ds[i], where) for i in range(n)), where
    files = list_image_files(os.path.expanduser(str(source)))
    files = files if num is None else files[:num]
    return len(files), iter_folder_images(files, image_size), f'folder {source}'


def _chunks(it: Iterator, size: int) -> Iterator[list]:
    chunk = []
    for x in it:
        chunk.append(x)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def features_of_source(extractor, source, *, num=None, image_size=None, batch_size=64,
                       progress=True):
    """Per-layer features (float64) of the images of an image source (see :func:`image_source`),
    read chunk by chunk; returns ``(list of [N, D_k], description)``."""
    import torch
    from tqdm import tqdm

    from vargo.components.metrics.frechet import extract_layers
    n, images, where = image_source(source, num=num, image_size=image_size)
    parts = []
    with tqdm(total=n, desc='features', unit='img', disable=not progress) as bar:
        for chunk in _chunks(images, 16 * batch_size):
            parts.append(extract_layers(extractor, chunk, batch_size))
            bar.update(len(chunk))
    if not parts:
        raise UsageError(f'{where} holds no images')
    return [torch.cat([p[k] for p in parts]) for k in range(len(parts[0]))], where


# ---- policy samples ------------------------------------------------------------------------------
def sample_images(policy, sampler, dataset, *, num: int, per_condition: int = 1,
                  batch_conditions: int = 16, seed: int = 0, progress: bool = True):
    """``num`` decoded samples ``[num, 3, H, W]`` (float, CPU) of ``policy`` by ``sampler``.

    Conditions are the dataset's items in order, cycled; ``per_condition`` samples each; batch
    ``k`` draws its noise from ``BatchRNG(seed, k, ...)`` (reproducible for a seed).
    """
    import torch
    from torch.utils.data import default_collate
    from tqdm import tqdm

    from vargo.core.loop import conditions_from_batch
    from vargo.core.rng import BatchRNG
    if len(dataset) == 0:
        raise UsageError('the condition dataset is empty')
    out, have, k = [], 0, 0
    with tqdm(total=num, desc='sampling', unit='img', disable=not progress) as bar:
        while have < num:
            need = -(-(num - have) // per_condition)
            m = min(batch_conditions, need)
            items = [dataset[(k * batch_conditions + j) % len(dataset)] for j in range(m)]
            cond = policy.encode_conditions(conditions_from_batch(default_collate(items)))
            rng = BatchRNG(seed, k, m * per_condition, rank=0, world_size=1,
                           device=policy.device)
            with torch.no_grad():
                r = sampler.rollout(policy, cond, group_size=per_condition, rng=rng)
            if r.images is None:
                raise UsageError('the sampler returned no decoded images (rollout.images is None)')
            imgs = r.images[:num - have].detach().float().cpu()
            out.append(imgs)
            have += len(imgs)
            bar.update(len(imgs))
            k += 1
    return torch.cat(out)


def load_policy(config: str, checkpoint: Optional[str], cfg_options: Optional[dict] = None,
                cfg_scale: Optional[float] = None):
    """``(policy, sampler, condition dataset)`` of a vargo config (+ optional checkpoint)."""
    from mmengine.config import Config
    from mmengine.registry import DefaultScope

    from vargo.core.config import missing_files
    from vargo.core.registry import DATASETS, POLICIES, SAMPLERS, checked_build
    from vargo.core.runner import load_config
    import vargo.components  # noqa: F401

    cfg = load_config(config, cfg_options)
    for key in ('policy', 'sampler'):
        if key not in cfg:
            raise UsageError(f'{config} has no {key!r}: pass a vargo training config')
    missing = missing_files(Config(dict(policy=cfg.policy, sampler=cfg.sampler)),
                            keys=('policy', 'sampler'))
    if missing:
        lines = [f'{config} names files that do not exist:']
        for where, path, src in missing:
            lines.append(f'  {where} = {path}' + (f'\n      published at {src}' if src else ''))
        raise FileNotFoundError('\n'.join(lines))
    if checkpoint and not os.path.isfile(checkpoint):
        raise FileNotFoundError(f'checkpoint not found: {checkpoint}')
    sampler_cfg = dict(evaluation_sampler_cfg(cfg.sampler))
    if cfg_scale is not None:
        check_cfg_scale(cfg_scale, '--cfg-scale')
        sampler_cfg['cfg_scale'] = float(cfg_scale)
    elif sampler_cfg.get('cfg_scale') is not None:
        check_cfg_scale(sampler_cfg['cfg_scale'], 'sampler.cfg_scale (config or --cfg-options)')
    dl = cfg.get('train_dataloader') or {}
    if not isinstance(dl.get('dataset'), dict):
        raise UsageError(f'{config} has no train_dataloader.dataset to draw conditions from')
    with DefaultScope.overwrite_default_scope('vargo'):
        policy = checked_build(cfg.policy, POLICIES)
        sampler = checked_build(sampler_cfg, SAMPLERS)
        dataset = DATASETS.build(dl['dataset'])
    if checkpoint:
        load_policy_checkpoint(policy, checkpoint)
    policy.eval()
    return policy, sampler, dataset


# ---- command line --------------------------------------------------------------------------------
def parse_args(argv=None):
    p = ArgumentParser(
        description=__doc__.splitlines()[0], epilog=__doc__.split('\n\n', 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest='mode', required=True)

    def common(q):
        q.add_argument('--extractor', required=True,
                       help="torch-fidelity feature extractor name, e.g. 'inception-v3-compat', "
                            "'vargo-shapes'")
        q.add_argument('--weights-path', help='local weights file of the extractor (required for '
                                              "torch-fidelity's own extractors)")
        q.add_argument('--layer', help="feature layer (default: the extractor's layer for FID)")
        q.add_argument('--batch-size', type=positive_int, default=64, metavar='N',
                       help='images per extractor forward, >= 1 (default 64)')
        q.add_argument('--out', required=True, help='the .npz to write')
        q.add_argument('--quiet', action='store_true', help='no progress bar')

    details = dict(epilog=__doc__.split('\n\n', 1)[1],
                   formatter_class=argparse.RawDescriptionHelpFormatter)
    qi = sub.add_parser('images', help='statistics of real images (a folder or a dataset config)',
                        description='Statistics of real images: an image folder or a dataset '
                                    'config.', **details)
    qi.add_argument('source', type=lambda text: existing_path(
                        text, 'an image folder or a .py config file with dataset = dict(...)'),
                    help='an image folder (png/jpg, recursive) or a .py config file with '
                         'dataset = dict(type=...)')
    qi.add_argument('--num', type=int_at_least(2, 'statistics need a covariance'), metavar='N',
                    help='use the first N images, >= 2 (default: all)')
    qi.add_argument('--image-size', type=positive_int, metavar='S',
                    help='centre-crop and resize folder images to S x S (ADM protocol) first')
    common(qi)
    qs = sub.add_parser('samples', help="statistics of a policy's samples",
                        description="Statistics of a policy's samples (e.g. LooFidReward's "
                                    "init_stats_path).", **details)
    qs.add_argument('config', help='a vargo training config')
    qs.add_argument('checkpoint', nargs='?', type=checkpoint_file,
                    help=f"{CHECKPOINT_HELP} (default: the config's base model)")
    qs.add_argument('--num', type=int_at_least(2, 'statistics need a covariance'), required=True,
                    metavar='N', help='number of samples, >= 2')
    qs.add_argument('--per-condition', type=positive_int, default=1, metavar='N',
                    help='samples per condition, >= 1 (default 1)')
    qs.add_argument('--batch-conditions', type=positive_int, default=16, metavar='N',
                    help='conditions per batch, >= 1 (default 16)')
    qs.add_argument('--cfg-scale', type=cfg_scale, metavar='S',
                    help="override the sampler's CFG scale, > 0 (1 = no CFG)")
    qs.add_argument('--seed', type=int, default=0)
    qs.add_argument('--cfg-options', nargs='+', action=CfgOptionsAction, metavar='KEY=VALUE',
                    help='override config entries, e.g. sampler.top_k=100')
    common(qs)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from vargo.components.metrics import frechet
    from vargo.core.cli import apply_heap_setting
    apply_heap_setting()   # README "Heap"
    from vargo.core.registry import ConfigError
    progress = not args.quiet
    try:
        _, (layer,) = frechet.check_extractor(args.extractor, args.weights_path,
                                              [args.layer] if args.layer else None, cli=True)
        if args.mode == 'images':
            check_image_source(args.source)
        else:
            policy, sampler, dataset = load_policy(args.config, args.checkpoint, args.cfg_options,
                                                   args.cfg_scale)
    except (UsageError, ConfigError, FileNotFoundError) as e:
        return fail(e)
    try:
        extractor = build_extractor(args.extractor, args.weights_path, [layer])
        if args.mode == 'images':
            (feats,), where = features_of_source(extractor, args.source, num=args.num,
                                                 image_size=args.image_size,
                                                 batch_size=args.batch_size, progress=progress)
            source = f'images: {where}' + (f', image_size={args.image_size}'
                                           if args.image_size else '')
        else:
            images = sample_images(policy, sampler, dataset, num=args.num,
                                   per_condition=args.per_condition,
                                   batch_conditions=args.batch_conditions, seed=args.seed,
                                   progress=progress)
            (feats,) = frechet.extract_layers(extractor, images, args.batch_size)
            scale = sampler.logprob_spec().cfg_scale
            source = (f'samples: config={args.config} checkpoint={args.checkpoint} '
                      f'cfg_scale={scale:g} seed={args.seed} per_condition={args.per_condition}')
        if len(feats) < 2:
            raise UsageError(f'statistics need at least 2 images, got {len(feats)}')
        write_statistics(args.out, feats, extractor=args.extractor, feature_layer=layer,
                         weights_path=args.weights_path, source=source)
    except (UsageError, ConfigError, FileNotFoundError) as e:
        return fail(e)
    print(f'wrote {args.out}: {len(feats)} images, D = {feats.shape[1]} '
          f'({args.extractor}, layer {layer}); {source}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
