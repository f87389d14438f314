"""Evaluate a policy: reward heads, extra metric heads, FID-family metrics, mean token entropy
and a sample grid, for one or several CFG scales; JSON + a printed table.

    python tools/eval.py CONFIG [CHECKPOINT] [--splits train eval] [--samples-per-condition N]
                         [--max-conditions N] [--cfg-scale S | --cfg-scales S1 S2 ...]
                         [--batch-conditions 16] [--seed 0] [--out DIR] [--no-fidelity]
                         [--cfg-options k=v ...]

Without CHECKPOINT the policy is the config's base model. Every split and scale is sampled with
the same seed, so scales are compared on the same noise. Everything that can be missing (the
checkpoint, the files of the config's components, of ``eval_cfg.metric_heads`` and of
``eval_cfg.fidelity``) is checked before sampling starts; a problem exits with code 2 and a
message naming the file (and where an official file is published). Nothing is downloaded.
``--samples-per-condition``, ``--max-conditions`` and ``--batch-conditions`` are integers >= 1,
CFG scales finite numbers > 0 (1 = no CFG), CHECKPOINT a torch file written by
``tools/train.py``; a bad argument is one line ``error: <argument>: ...`` (exit code 2),
found before any model is built (``vargo.core.cli``).

``eval_cfg`` (a top-level config key, from ``configs/_base_/datasets/*.py`` or the config)
---------------------------------------------------------------------------------------------
* ``splits``: ``{name: condition dataset config}``, e.g. ``train=dict(type='ShapesClassDataset',
  split='train')``; ``--splits`` picks some.
* ``samples_per_condition`` (default 4), ``max_conditions`` (None: all), ``seed`` (default 0;
  ``--seed`` overrides it).
* ``fidelity`` (optional; ``--no-fidelity`` skips it), one of two forms:

  - the Shapes benchmark: ``dict(extractor='vargo-shapes', task='c2i' | 't2i')``: FID against
    the shipped real statistics of the split, KID and precision/recall against the split's
    rendered real images (``vargo.components.benchmarks.shapes_fidelity``), as before;
  - any torch-fidelity feature extractor (``torch_fidelity.registry.
    FEATURE_EXTRACTORS_REGISTRY``, 'vargo-shapes' included) with a reference::

        fidelity=dict(
            extractor='inception-v3-compat',
            weights_path='checkpoints/inception/pt_inception-2015-12-05-6726825d.pth',
            reference_stats='checkpoints/fid_stats/imagenet_train_inception.npz',
            metrics=('fid', 'isc'))

    Keys: ``extractor``; ``weights_path`` (a local file; required for torch-fidelity's own
    extractors, which would otherwise download); ``feature_layer`` (default: the extractor's
    layer for FID); ``reference_stats``: an ``.npz`` with ``mu`` and ``sigma`` (written by
    ``tools/fid_stats.py``, or any file ``frechet.load_feature_statistics`` reads;
    ``reference_stats_prefix`` selects keys, e.g. ``'c2i_{split}_'`` for the shipped Shapes
    file) -- FID only; or ``reference_images``: an image folder, a ``.py`` file with
    ``dataset = dict(type=...)`` or an image dataset config dict (``num_reference`` caps the
    number of images, ``image_size`` centre-crops folder images as ``tools/fid_stats.py``)
    -- FID, KID and precision/recall; either may be a ``{split: reference}`` dict, and
    ``'{split}'`` in a path or prefix is replaced by the split's name; ``metrics``: a subset of
    ``('fid', 'isc', 'kid', 'prc')`` (default: fid, plus kid and prc with reference images);
    ``kid_subset_size`` (1000, capped at the sample sizes), ``kid_subsets`` (100);
    ``batch_size`` (64, images per extractor forward).

    FID is computed from the two Gaussians in float64 by ``vargo.components.metrics.frechet``
    (``|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^{1/2})``, Heusel et al., arXiv 1706.08500, eq. 6,
    computed as torch-fidelity computes it, so it equals torch-fidelity's on the same features:
    ``tests/test_eval_tool.py``). KID, precision/recall and IS are torch-fidelity's own metric
    functions on the features. IS needs class logits ('isc' layer of Inception:
    ``logits_unbiased``; of 'vargo-shapes': ``presence_logits``); other extractors are an
    error naming the extractor.

* ``metric_heads`` (optional): ``{name: reward head config}``, extra reward heads scored on the
  samples beside the config's training rewards and reported the same way (``<name>/mean``,
  ``<name>/strict``, ``<name>/<metric>``). They are built before sampling, and their files are
  checked with the config's (``vargo.core.config.check_files`` only walks the training
  components, so ``eval_cfg`` is checked here). Names must differ from the training reward
  heads'. Example for an ImageNet class-conditional config (LOO-FID's evaluation: CLIP score
  and HPSv2.1 on "a photo of a {class}", FID and IS on Inception against ImageNet statistics
  made with ``tools/fid_stats.py images``)::

      eval_cfg = dict(
          splits=dict(val=dict(type='ClassConditionDataset', num_classes=1000)),
          samples_per_condition=50,
          fidelity=dict(
              extractor='inception-v3-compat',
              weights_path='checkpoints/inception/pt_inception-2015-12-05-6726825d.pth',
              reference_stats='checkpoints/fid_stats/imagenet_train_inception.npz',
              metrics=('fid', 'isc')),
          metric_heads=dict(
              clip=dict(type='ClipScoreReward', arch='ViT-L-14', weights_tag='openai',
                        checkpoint='checkpoints/clip/open_clip_pytorch_model.bin',
                        class_names='imagenet', templates='a photo of a {}'),
              hps=dict(type='HPSv2Reward', checkpoint='checkpoints/hps/HPS_v2.1_compressed.pt',
                       class_names='imagenet', templates='a photo of a {}')))

  and then ``python tools/eval.py CONFIG CKPT --cfg-scales 1 1.5`` (LOO-FID's claim is about
  CFG-free sampling).

CFG
---
``--cfg-scale S`` samples with guidance S instead of the config's (1 = no CFG).
``--cfg-scales S1 S2 ...`` evaluates each scale in one call: results are keyed
``'<split>@cfg<S>'`` (e.g. ``'train@cfg1'``, ``'train@cfg1.5'``), one column each in the table,
grids ``grid_<split>_cfg<S>.png``. Without it results are keyed by split, as before.

Output (``--out``, default ``work_dirs/<config>/eval_<checkpoint or base>``)
---------------------------------------------------------------------------
``eval.json``: ``config``, ``checkpoint``, ``seed``, ``samples_per_condition``, ``cfg_scale``
(``cfg_scales`` with ``--cfg-scales``) and ``results`` ``{key: {metric: value}}`` with
``num_conditions``, ``num_samples``, ``cfg_scale``, ``<head>/mean|strict|...``,
``entropy/mean|normalized``, ``fidelity/fid|kid|kid_std|precision|recall|f_score|isc|isc_std|
num_gen|num_real``, ``time_s``; ``protocol``, what the numbers depend on besides the weights
(``vargo.core.eval_protocol``): the drawing sampler's type and every setting as used
(``cfg_scale`` a list with ``--cfg-scales``; top-k/top-p/temperature or the family's
equivalents, defaults filled in), ``sampling`` (``seed``, ``samples_per_condition``,
``max_conditions``, ``batch_conditions``), the evaluated ``splits``' dataset configs, the scored
heads' classes and ``metric_heads``' configs, ``fidelity`` (extractor name, layer, weights file
and its sha256; metrics; per split the reference statistics file(s) with sha256 and key prefix,
or the real images) and ``vargo_commit``; and ``grid_<key>.png``. Heads that keep per-image
records (``GenEvalReward``: prompt, tag, correct, reason, kept detections, as GenEval's
results.jsonl) write them to ``records_<head>_<key>.jsonl``, and heads with a summary table
(GenEval's per-task table and overall score) print it under the results table. The protocol
is printed under the table; ``tools/multiseed.py`` and the run report print it under theirs.
"""
from __future__ import annotations

import os

# before torch loads OpenMP: idle threads sleep, not spin (README "Threads on a shared machine")
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

import argparse
import json
import math
import sys
import time
from typing import Optional

os.environ.setdefault('HF_HUB_OFFLINE', '1')
if os.path.dirname(os.path.abspath(__file__)) not in sys.path:    # tools/fid_stats.py (appended:
    sys.path.append(os.path.dirname(os.path.abspath(__file__)))  # it never shadows a module)

import fid_stats  # noqa: E402
from vargo.components.metrics import frechet  # noqa: E402
from vargo.core import eval_protocol  # noqa: E402
from vargo.core.cli import (CHECKPOINT_HELP, ArgumentParser, CfgOptionsAction,  # noqa: E402
                            UsageError, cfg_scale, check_cfg_scale, checkpoint_file, fail,
                            evaluation_sampler_cfg, family_sampler_cfg, load_policy_checkpoint,
                            positive_int)

FIDELITY_METRICS = ('fid', 'isc', 'kid', 'prc')
FIDELITY_KEYS = ('extractor', 'task', 'weights_path', 'feature_layer', 'reference_stats',
                 'reference_stats_prefix', 'reference_images', 'num_reference', 'image_size',
                 'metrics', 'kid_subset_size', 'kid_subsets', 'batch_size')


def parse_args(argv=None):
    p = ArgumentParser(description=' '.join(__doc__.split('\n\n')[0].split()),
                       epilog=__doc__.split('\n\n', 1)[1],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('config', help='a vargo config with eval_cfg (see below)')
    p.add_argument('checkpoint', nargs='?', type=checkpoint_file,
                   help=f"{CHECKPOINT_HELP} (default: the config's base model)")
    p.add_argument('--splits', nargs='+', help='which eval_cfg.splits to evaluate (default all)')
    p.add_argument('--samples-per-condition', type=positive_int, metavar='N',
                   help='samples per condition, >= 1 (default: eval_cfg.samples_per_condition, '
                        'else 4)')
    p.add_argument('--max-conditions', type=positive_int, metavar='N',
                   help='evaluate the first N conditions of each split, >= 1 (default: '
                        'eval_cfg.max_conditions, else all)')
    g = p.add_mutually_exclusive_group()
    g.add_argument('--cfg-scale', type=cfg_scale, metavar='S',
                   help="override the sampler's CFG scale, > 0 (1 = no CFG)")
    g.add_argument('--cfg-scales', type=cfg_scale, nargs='+', metavar='S',
                   help='evaluate each of these CFG scales, each > 0 (results keyed '
                        '<split>@cfg<S>)')
    p.add_argument('--batch-conditions', type=positive_int, default=16, metavar='N',
                   help='conditions per rollout batch, >= 1 (default 16)')
    p.add_argument('--seed', type=int, default=None,
                   help='sampling seed (default: eval_cfg.seed, else 0)')
    p.add_argument('--out', help='output directory (default: <work_dirs>/<config>/eval[_CKPT])')
    p.add_argument('--no-fidelity', action='store_true', help='skip FID/KID/precision/recall/IS')
    p.add_argument('--cfg-options', nargs='+', action=CfgOptionsAction, metavar='KEY=VALUE',
                   help='override config entries, e.g. sampler.top_k=100')
    return p.parse_args(argv)


def score_heads(heads: dict, rollout, ctx) -> dict:
    """``<name>/mean`` (NaN scores left out), ``<name>/strict`` and ``<name>/<metric>`` of
    reward heads on a rollout."""
    import torch
    metrics = {}
    for name, head in heads.items():
        out = head(rollout, ctx)
        s = out.scores.float()
        ok = ~torch.isnan(s)
        metrics[f'{name}/mean'] = float(s[ok].mean()) if ok.any() else float('nan')
        if out.strict is not None:
            metrics[f'{name}/strict'] = float(out.strict.float().mean())
        for key, value in out.metrics.items():
            metrics[f'{name}/{key}'] = float(value)
    return metrics


def evaluate_split(model, dataset, *, per_condition: int, batch_conditions: int, seed: int,
                   max_conditions=None, progress=True, metric_heads: Optional[dict] = None
                   ) -> tuple[dict, object]:
    """Sample every condition of ``dataset`` ``per_condition`` times; score and measure.

    Scores with the model's reward heads and ``metric_heads`` (extra heads, same reporting).
    Returns (metrics dict, the concatenated rollout).
    """
    import torch
    from torch.utils.data import default_collate
    from tqdm import tqdm

    from vargo.core.loop import conditions_from_batch
    from vargo.core.rng import BatchRNG
    from vargo.core.types import Rollout

    n = len(dataset) if max_conditions is None else min(len(dataset), max_conditions)
    policy, sampler = model.policy, model.sampler
    spec_none = type(sampler.logprob_spec())(mode='none',
                                             temperature=sampler.logprob_spec().temperature)
    rollouts, entropies = [], []
    batches = range(0, n, batch_conditions)
    for k, start in enumerate(tqdm(batches, desc='sampling', disable=not progress)):
        items = [dataset[i] for i in range(start, min(n, start + batch_conditions))]
        cond = policy.encode_conditions(conditions_from_batch(default_collate(items)))
        rng = BatchRNG(seed, k, len(items) * per_condition, rank=0, world_size=1,
                       device=policy.device)
        with torch.no_grad():
            r = sampler.rollout(policy, cond, group_size=per_condition, rng=rng)
            r.group_ids = r.group_ids + start
            ev = policy.evaluate(r, spec=spec_none, with_entropy=True)
        if ev.entropy is not None:
            entropies.append((ev.entropy * r.action_mask).sum(1) / r.action_mask.sum(1))
        rollouts.append(r.to('cpu'))
    everything = Rollout.cat(rollouts)
    metrics = {'num_conditions': n, 'num_samples': everything.batch_size}
    ctx = model.reward_context(0)
    heads = {name: head.evaluation_head() for name, head in model.reward_heads.items()}
    metrics.update(score_heads(heads, everything, ctx))
    metrics.update(score_heads(metric_heads or {}, everything, ctx))
    if entropies:
        ent = torch.cat(entropies)
        metrics['entropy/mean'] = float(ent.mean())
        vocab = getattr(getattr(policy, 'cfg', None), 'vocab_size', None)
        if vocab:
            metrics['entropy/normalized'] = float(ent.mean()) / math.log(vocab)
    return metrics, everything


# ---- fidelity ------------------------------------------------------------------------------------
def _per_split(value, split: str, what: str):
    """A ``{split: value}`` mapping (a dict without 'type') picks the split's entry; '{split}'
    in a string is replaced."""
    if isinstance(value, dict) and 'type' not in value:
        if split not in value:
            raise UsageError(f'eval_cfg.fidelity.{what} has entries for splits {sorted(value)} '
                             f'but not for {split!r}: add one (or give a single reference)')
        value = value[split]
    if isinstance(value, str):
        value = value.replace('{split}', split)
    return value


class Fidelity:
    """FID / KID / precision-recall / IS of samples per split, as ``eval_cfg.fidelity`` says.

    Constructing it validates the config and checks every file (before sampling); :meth:`prepare`
    builds the extractor and reads reference statistics; calling it measures a split's images.

    Args:
        cfg: the ``eval_cfg.fidelity`` dict (module docstring).
        splits: the split names that will be measured.
    """

    def __init__(self, cfg: dict, splits) -> None:
        cfg = dict(cfg)
        unknown = sorted(set(cfg) - set(FIDELITY_KEYS))
        if unknown:
            raise UsageError(f'eval_cfg.fidelity has unknown keys {unknown}; accepted: '
                             f'{list(FIDELITY_KEYS)}')
        self.cfg, self.splits = cfg, list(splits)
        self.extractor_name = cfg.get('extractor')
        if not isinstance(self.extractor_name, str):
            raise UsageError(f"eval_cfg.fidelity.extractor={self.extractor_name!r}: name a "
                             f"torch-fidelity feature extractor, e.g. 'vargo-shapes' (with task) "
                             f"or 'inception-v3-compat' (with weights_path and reference_stats "
                             f"or reference_images)")
        self.weights_path = cfg.get('weights_path')
        has_ref = cfg.get('reference_stats') is not None or cfg.get('reference_images') is not None
        self.shapes_benchmark = self.extractor_name == 'vargo-shapes' and not has_ref
        metrics = cfg.get('metrics')
        if isinstance(metrics, str):
            metrics = (metrics,)
        if metrics is not None:
            metrics = tuple(metrics)
            bad = [m for m in metrics if m not in FIDELITY_METRICS]
            if bad or not metrics:
                raise UsageError(f'eval_cfg.fidelity.metrics={metrics!r}: each must be one of '
                                 f'{FIDELITY_METRICS} (fid, isc = inception score, kid, prc = '
                                 f'precision/recall), at least one')
        if self.shapes_benchmark:
            self._check_shapes(metrics)
            return
        missing = []                        # every missing file is reported at once
        try:
            cls, _ = frechet.check_extractor(self.extractor_name, self.weights_path, cli=True)
        except FileNotFoundError as e:
            missing.append(f'eval_cfg.fidelity.weights_path: {e}')
            cls = frechet.extractor_registry()[self.extractor_name]
        if cfg.get('reference_stats') is not None and cfg.get('reference_images') is not None:
            raise UsageError('eval_cfg.fidelity has both reference_stats and reference_images: '
                             'give one (statistics: FID only; images: FID, KID, precision/recall)')
        if metrics is None:
            metrics = ('fid',) + (('kid', 'prc') if cfg.get('reference_images') is not None
                                  else ())
        self.metrics = metrics
        if not has_ref and metrics != ('isc',):
            raise UsageError(f'eval_cfg.fidelity (extractor {self.extractor_name!r}) needs '
                             f'reference_stats=<.npz of mu/sigma, see tools/fid_stats.py> or '
                             f'reference_images=<image folder or dataset config> for '
                             f'{[m for m in metrics if m != "isc"]}')
        if cfg.get('reference_images') is None and ({'kid', 'prc'} & set(metrics)):
            raise UsageError(f'eval_cfg.fidelity.metrics={metrics}: KID and precision/recall '
                             f'need real image features, not statistics: give reference_images '
                             f"(or keep metrics=('fid',) with reference_stats)")
        provided = tuple(cls.get_provided_features_list())
        self.fid_layer = cfg.get('feature_layer') or cls.get_default_feature_layer_for_metric('fid')
        if self.fid_layer not in provided:
            raise UsageError(f'eval_cfg.fidelity.feature_layer={self.fid_layer!r} is not provided '
                             f'by {self.extractor_name!r}; it provides {provided}')
        self.layers = [self.fid_layer] if set(metrics) - {'isc'} else []
        if 'isc' in metrics:
            try:
                isc_layer = cls.get_default_feature_layer_for_metric('isc')
            except Exception:
                isc_layer = None
            if not isc_layer or 'logits' not in str(isc_layer) or isc_layer not in provided:
                raise UsageError(f"eval_cfg.fidelity.metrics includes 'isc' (inception score), "
                                 f"but extractor {self.extractor_name!r} provides no class logits "
                                 f"(its IS layer: {isc_layer!r}); IS needs a classifier such as "
                                 f"'inception-v3-compat': drop 'isc' from metrics")
            self.isc_layer = isc_layer
            if isc_layer not in self.layers:
                self.layers.append(isc_layer)
        for split in self.splits:
            if cfg.get('reference_stats') is not None:
                path = os.path.expanduser(str(_per_split(cfg['reference_stats'], split,
                                                         'reference_stats')))
                if not os.path.isfile(path):
                    missing.append(
                        f'eval_cfg.fidelity.reference_stats: statistics file not found: {path}; '
                        f'write it with `python tools/fid_stats.py images DIR_OR_DATASET_CONFIG '
                        f'--extractor {self.extractor_name}'
                        + (f' --weights-path {self.weights_path}' if self.weights_path else '')
                        + f' --out {path}`')
            if cfg.get('reference_images') is not None:
                try:
                    fid_stats.check_image_source(_per_split(cfg['reference_images'], split,
                                                            'reference_images'))
                except FileNotFoundError as e:
                    missing.append(f'eval_cfg.fidelity.reference_images: {e}')
        if missing:
            raise FileNotFoundError('\n'.join(missing))
        self._extractor = None
        self._real: dict = {}

    def _check_shapes(self, metrics) -> None:
        from vargo.components.benchmarks.shapes_features import METRICS, REFERENCE_SPLITS, TASKS
        task = self.cfg.get('task')
        if task not in TASKS:
            raise UsageError(f"eval_cfg.fidelity.task={task!r}: the Shapes benchmark's fidelity "
                             f"(extractor='vargo-shapes' without a reference) needs task in "
                             f"{TASKS}; or give reference_stats / reference_images")
        bad = [s for s in self.splits if s not in REFERENCE_SPLITS]
        if bad:
            raise UsageError(f'eval_cfg.fidelity: the Shapes benchmark has reference statistics '
                             f'for splits {REFERENCE_SPLITS}, not {bad}; give reference_stats / '
                             f'reference_images for them')
        if metrics is not None and any(m not in METRICS for m in metrics):
            raise UsageError(f'eval_cfg.fidelity.metrics={metrics}: Shapes supports {METRICS}')
        if self.weights_path is not None and not os.path.isfile(self.weights_path):
            raise FileNotFoundError(f'eval_cfg.fidelity.weights_path: Shapes feature extractor '
                                    f'weights not found: {self.weights_path}')
        self.metrics = metrics

    # -- the protocol: what the numbers depend on ------------------------------------------------
    def protocol(self) -> dict:
        """The extractor (name, layer, weights file and its sha256), the metrics and, per split,
        the reference: statistics files with their sha256, or the real images."""
        if self.shapes_benchmark:
            return self._shapes_protocol()
        weights = eval_protocol.file_record(self.weights_path) if self.weights_path else None
        extractor = dict(name=self.extractor_name, feature_layer=self.fid_layer, weights=weights)
        if 'isc' in self.metrics:
            extractor['isc_layer'] = self.isc_layer
        return dict(extractor=extractor, metrics=list(self.metrics),
                    references={split: self._reference_record(split) for split in self.splits},
                    settings=self._metric_settings(self.metrics))

    def _metric_settings(self, metrics) -> dict:
        out = {}
        if 'kid' in metrics:
            out.update(kid_subset_size=int(self.cfg.get('kid_subset_size', 1000)),
                       kid_subsets=int(self.cfg.get('kid_subsets', 100)))
        return out

    def _reference_record(self, split: str) -> dict:
        ref = {}
        if self.cfg.get('reference_stats') is not None and 'fid' in self.metrics:
            path = _per_split(self.cfg['reference_stats'], split, 'reference_stats')
            prefix = _per_split(self.cfg.get('reference_stats_prefix') or '', split,
                                'reference_stats_prefix')
            ref['fid_statistics'] = eval_protocol.file_record(path, prefix=prefix)
        if self.cfg.get('reference_images') is not None and set(self.metrics) - {'isc'}:
            source = _per_split(self.cfg['reference_images'], split, 'reference_images')
            if isinstance(source, dict):
                record = {'dataset': eval_protocol.plain(source)}
            elif os.path.isdir(os.path.expanduser(str(source))):
                record = eval_protocol.folder_record(source)
            else:
                record = {'config_file': eval_protocol.file_record(source)}
            ref['real_images'] = dict(record, num_reference=self.cfg.get('num_reference'),
                                      image_size=self.cfg.get('image_size'))
        return ref

    def _shapes_protocol(self) -> dict:
        import inspect

        from vargo.components.benchmarks import shapes_features as sf
        task = self.cfg['task']
        metrics = tuple(self.metrics or inspect.signature(sf.shapes_fidelity)
                        .parameters['metrics'].default)
        layer = frechet.extractor_registry()[sf.EXTRACTOR_NAME] \
            .get_default_feature_layer_for_metric('fid')
        refs = {}
        for split in self.splits:
            ref = {}
            if 'fid' in metrics:
                ref['fid_statistics'] = eval_protocol.file_record(
                    sf.DEFAULT_STATS_PATH, prefix=f'{task}_{split}_')
            if {'kid', 'prc'} & set(metrics):
                ref['real_images'] = dict(
                    dataset=dict(type='ShapesImageDataset', split=split, task=task,
                                 num_samples=sf.REFERENCE_NUM_SAMPLES, seed=sf.REFERENCE_SEED),
                    used='the first num_gen images (as many as the samples)')
            refs[split] = ref
        weights = eval_protocol.file_record(self.weights_path or sf.DEFAULT_WEIGHTS_PATH)
        defaults = inspect.signature(sf.shapes_fidelity).parameters
        settings = {k: defaults[k].default for k in ('kid_subset_size', 'kid_subsets')
                    if 'kid' in metrics}
        return dict(extractor=dict(name=sf.EXTRACTOR_NAME, feature_layer=layer, weights=weights),
                    metrics=list(metrics), references=refs, settings=settings)

    # -- before sampling: build and read ----------------------------------------------------------
    def prepare(self) -> 'Fidelity':
        """Build the extractor and read (and check) reference statistics; idempotent."""
        if self.shapes_benchmark or self._extractor is not None:
            return self
        self._extractor = frechet.build_extractor(self.extractor_name, self.weights_path,
                                                  self.layers, cli=True)
        if self.cfg.get('reference_stats') is not None and 'fid' in self.metrics:
            for split in self.splits:
                self._real_statistics(split)
        return self

    def _real_statistics(self, split: str):
        path = os.path.expanduser(str(_per_split(self.cfg['reference_stats'], split,
                                                 'reference_stats')))
        prefix = _per_split(self.cfg.get('reference_stats_prefix') or '', split,
                            'reference_stats_prefix')
        key = ('stats', path, prefix)
        if key in self._real:
            return self._real[key]
        stats = frechet.load_feature_statistics(path, prefix)
        if stats.cov is None:
            raise UsageError(f'{path} (prefix {prefix!r}) holds only per-dimension variances; FID '
                             f"needs the full covariance 'sigma' [D, D] (tools/fid_stats.py "
                             f'writes it)')
        meta = stats.meta                       # tools/fid_stats.py metadata, per file
        if meta.get('extractor') and meta['extractor'] != self.extractor_name:
            raise UsageError(f'{path} holds statistics of extractor {meta["extractor"]!r}, but '
                             f'eval_cfg.fidelity.extractor={self.extractor_name!r}: recompute '
                             f'them with tools/fid_stats.py --extractor {self.extractor_name}')
        if meta.get('feature_layer') and meta['feature_layer'] != self.fid_layer:
            raise UsageError(f'{path} holds statistics of layer {meta["feature_layer"]!r}, but '
                             f'FID uses layer {self.fid_layer!r}: set feature_layer or recompute')
        if meta.get('weights_sha256') and self.weights_path:
            sha = frechet.file_sha256(os.path.expanduser(str(self.weights_path)))
            if sha != meta['weights_sha256']:
                raise UsageError(f'{path} holds statistics of extractor weights '
                                 f'{meta["weights_sha256"][:12]}..., but {self.weights_path} is '
                                 f'{sha[:12]}...: statistics and weights must match')
        self._real[key] = (*stats.numpy(), stats.count)
        return self._real[key]

    def _real_features(self, split: str):
        source = _per_split(self.cfg['reference_images'], split, 'reference_images')
        key = ('images', repr(source))
        if key not in self._real:
            feats, _ = fid_stats.features_of_source(
                self._extractor, source, num=self.cfg.get('num_reference'),
                image_size=self.cfg.get('image_size'),
                batch_size=int(self.cfg.get('batch_size', 64)), progress=False)
            self._real[key] = feats[0]
        return self._real[key]

    # -- measuring ------------------------------------------------------------------------------
    def __call__(self, images, split: str) -> dict:
        """Metrics of ``[N, 3, H, W]`` images (float in [0, 1] or uint8) of ``split``."""
        if self.shapes_benchmark:
            from vargo.components.benchmarks.shapes_features import shapes_fidelity
            kwargs = {} if self.metrics is None else {'metrics': self.metrics}
            if self.weights_path is not None:
                kwargs['weights_path'] = self.weights_path
            return shapes_fidelity(images, reference=split, task=self.cfg['task'], **kwargs)
        from torch_fidelity.metric_isc import isc_features_to_metric
        from torch_fidelity.metric_kid import kid_features_to_metric
        from torch_fidelity.metric_prc import prc_features_to_metric
        import torch_fidelity
        self.prepare()
        feats = frechet.extract_layers(self._extractor, images,
                                       int(self.cfg.get('batch_size', 64)))
        by_layer = dict(zip(self.layers, feats))
        n_gen = len(feats[0])
        out = {'num_gen': float(n_gen)}
        real = None
        if self.cfg.get('reference_images') is not None and set(self.metrics) - {'isc'}:
            real = self._real_features(split)
            out['num_real'] = float(len(real))
        if 'fid' in self.metrics:
            mu, sigma = frechet.gaussian_statistics(by_layer[self.fid_layer])
            if real is not None:
                mu_r, sigma_r = frechet.gaussian_statistics(real)
            else:
                mu_r, sigma_r, num = self._real_statistics(split)
                if num is not None:
                    out['num_real_fid'] = float(num)
            out['fid'] = frechet.frechet_distance(mu, sigma, mu_r, sigma_r)
        if 'kid' in self.metrics:
            size = min(int(self.cfg.get('kid_subset_size', 1000)), n_gen, len(real))
            subsets = 1 if size == n_gen == len(real) else int(self.cfg.get('kid_subsets', 100))
            res = kid_features_to_metric(by_layer[self.fid_layer], real, kid_subset_size=size,
                                         kid_subsets=subsets, verbose=False)
            out['kid'] = float(res[torch_fidelity.KEY_METRIC_KID_MEAN])
            out['kid_std'] = float(res[torch_fidelity.KEY_METRIC_KID_STD])
        if 'prc' in self.metrics:
            res = prc_features_to_metric(by_layer[self.fid_layer], real, save_cpu_ram=True,
                                         verbose=False)
            out['precision'] = float(res[torch_fidelity.KEY_METRIC_PRECISION])
            out['recall'] = float(res[torch_fidelity.KEY_METRIC_RECALL])
            out['f_score'] = float(res[torch_fidelity.KEY_METRIC_F_SCORE])
        if 'isc' in self.metrics:
            res = isc_features_to_metric(by_layer[self.isc_layer], splits=min(10, n_gen))
            out['isc'] = float(res[torch_fidelity.KEY_METRIC_ISC_MEAN])
            out['isc_std'] = float(res[torch_fidelity.KEY_METRIC_ISC_STD])
        return out


def fidelity_metrics(images, fidelity_cfg: dict, split: str) -> dict:
    """FID-family metrics of ``images`` of ``split`` as ``fidelity_cfg`` (``eval_cfg.fidelity``)
    says; see :class:`Fidelity` (which main() builds once, before sampling)."""
    return Fidelity(fidelity_cfg, [split]).prepare()(images, split)


# ---- metric heads --------------------------------------------------------------------------------
def check_metric_heads(eval_cfg, reward_names) -> list:
    """Validate ``eval_cfg.metric_heads``; return the missing files ``(key, path, source)``."""
    from mmengine.config import Config
    from vargo.core.config import missing_files
    heads = eval_cfg.get('metric_heads') or {}
    if not isinstance(heads, dict):
        raise UsageError(f'eval_cfg.metric_heads must be a dict {{name: reward head config}}, got '
                         f'{type(heads).__name__}')
    for name, head in heads.items():
        if not isinstance(head, dict) or 'type' not in head:
            raise UsageError(f'eval_cfg.metric_heads.{name} must be a reward head config '
                             f"dict(type=..., ...), got {head!r}")
        if name in reward_names or name in ('fidelity', 'entropy'):
            raise UsageError(f'eval_cfg.metric_heads.{name}: the name is taken by '
                             f'{"a training reward head" if name in reward_names else "a metric"}'
                             f'; rename it (its results are reported as <name>/mean)')
    return missing_files(Config(dict(eval_cfg=dict(metric_heads=heads))), keys=('eval_cfg',))


def build_metric_heads(heads_cfg: dict) -> dict:
    from mmengine.registry import DefaultScope
    from vargo.core.registry import REWARD_HEADS, checked_build
    with DefaultScope.overwrite_default_scope('vargo'):
        return {name: checked_build(dict(c), REWARD_HEADS) for name, c in heads_cfg.items()}


def evaluation_protocol(*, drawing: dict, samplers: list, model, eval_cfg, splits: list,
                        sampling: dict, fidelity: Optional[Fidelity]) -> dict:
    """The ``protocol`` of eval.json (``vargo.core.eval_protocol``): the drawing sampler's
    settings as used, the sampling settings, the splits, the scored heads and the fidelity
    references with the sha256 of every file."""
    from vargo.core.registry import SAMPLERS
    sampler = eval_protocol.resolved_settings(drawing, SAMPLERS.get(drawing['type']))
    sampler['type'] = type(samplers[0]).__name__
    scales = [float(s.logprob_spec().cfg_scale) for s in samplers]
    sampler['cfg_scale'] = scales if len(scales) > 1 else scales[0]
    heads = {name: type(head.evaluation_head()).__name__
             for name, head in model.reward_heads.items()}
    return dict(version=eval_protocol.PROTOCOL_VERSION, sampler=sampler, sampling=sampling,
                splits={s: eval_protocol.plain(eval_cfg.splits[s]) for s in splits},
                scored_heads=heads,
                metric_heads=eval_protocol.plain(eval_cfg.get('metric_heads') or {}),
                fidelity=fidelity.protocol() if fidelity is not None else None,
                vargo_commit=eval_protocol.vargo_commit())


def print_table(results: dict) -> None:
    keys = sorted({k for r in results.values() for k in r})
    cols = list(results)
    width = max(len(k) for k in keys)
    cw = max([12] + [len(c) for c in cols])
    print(f'{"metric":<{width}}  ' + '  '.join(f'{c:>{cw}}' for c in cols))
    for k in keys:
        row = []
        for c in cols:
            v = results[c].get(k)
            row.append(f'{v:>{cw}.4f}' if isinstance(v, float) else f'{str(v):>{cw}}')
        print(f'{k:<{width}}  ' + '  '.join(row))


def write_head_records(heads: dict, out_dir: str, key: str) -> None:
    """``records_<head>_<key>.jsonl``: the per-image records of heads that keep them (GenEval:
    prompt, tag, correct, reason, kept detections, as its official results.jsonl)."""
    for name, head in heads.items():
        records = getattr(head, 'records', None)
        if records:
            with open(os.path.join(out_dir, f'records_{name}_{key}.jsonl'), 'w') as f:
                for r in records:
                    f.write(json.dumps(r) + '\n')


def print_head_summaries(heads: dict, results: dict) -> None:
    """The summary tables of heads that have one (GenEval's per-task table) per result."""
    for key, res in results.items():
        for name, head in heads.items():
            lines = getattr(head, 'summary_lines', None)
            text = lines(res, prefix=f'{name}/', title=f'{name} on {key}') if lines else []
            if text:
                print('\n' + '\n'.join(text))


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    from mmengine.registry import DefaultScope

    from vargo.core.cli import apply_heap_setting
    apply_heap_setting()   # README "Heap"

    from vargo.core.config import assemble, check_files
    from vargo.core.hooks import make_grid, save_png
    from vargo.core.registry import DATASETS, MODELS, SAMPLERS, ConfigError, checked_build
    from vargo.core.runner import load_config

    # -- everything that can be wrong, before any model is built ---------------------------------
    try:
        cfg = assemble(load_config(args.config, args.cfg_options))
        missing = []
        try:
            check_files(cfg)
        except FileNotFoundError as e:
            missing.append(str(e))
        eval_cfg = cfg.get('eval_cfg')
        if not eval_cfg or not eval_cfg.get('splits'):
            raise ConfigError(f'{args.config} has no eval_cfg.splits: inherit a dataset config '
                              f'that defines them (e.g. configs/_base_/datasets/shapes_t2i.py)')
        splits = args.splits or list(eval_cfg.splits)
        unknown = [s for s in splits if s not in eval_cfg.splits]
        if unknown:
            known = ', '.join(map(repr, eval_cfg.splits))
            raise UsageError(f'--splits: {", ".join(map(repr, unknown))} not in eval_cfg.splits; '
                             f'give some of {known}')
        per_condition = args.samples_per_condition
        if per_condition is None:
            per_condition = eval_cfg.get('samples_per_condition', 4)
            if not isinstance(per_condition, int) or per_condition < 1:
                raise ConfigError(f'eval_cfg.samples_per_condition={per_condition!r} must be an '
                                  f'integer >= 1 (or give --samples-per-condition N)')
        max_conditions = args.max_conditions
        if max_conditions is None:
            max_conditions = eval_cfg.get('max_conditions')
            if max_conditions is not None and (not isinstance(max_conditions, int)
                                               or max_conditions < 1):
                raise ConfigError(f'eval_cfg.max_conditions={max_conditions!r} must be an '
                                  f'integer >= 1 or None (all conditions)')
        if args.seed is None:
            args.seed = eval_cfg.get('seed', 0)
            if isinstance(args.seed, bool) or not isinstance(args.seed, int):
                raise ConfigError(f'eval_cfg.seed={args.seed!r} must be an integer (or give '
                                  f'--seed N)')
        head_missing = check_metric_heads(eval_cfg, set(cfg.model.get('rewards') or {}))
        if head_missing:
            lines = ['eval_cfg.metric_heads names files that do not exist:']
            for where, path, source in head_missing:
                lines.append(f'  {where} = {path}')
                if source:
                    lines.append(f'      published at {source}')
            lines.append('Download them to those paths (or override with --cfg-options).')
            missing.append('\n'.join(lines))
        fidelity = None
        if eval_cfg.get('fidelity') and not args.no_fidelity:
            try:
                fidelity = Fidelity(eval_cfg.fidelity, splits)
            except FileNotFoundError as e:
                missing.append(str(e))
        if missing:
            raise FileNotFoundError('\n'.join(missing))
        scales = args.cfg_scales if args.cfg_scales else [args.cfg_scale]
        if len(set(scales)) != len(scales):
            raise UsageError(f'--cfg-scales: {" ".join(f"{s:g}" for s in scales)} repeats a '
                             f'scale; give each scale once')
        drawing = family_sampler_cfg(cfg.model.sampler)
        if scales[0] is not None:
            drawing.cfg_scale = scales[0]
        elif drawing.get('cfg_scale') is not None:
            check_cfg_scale(drawing.cfg_scale, 'sampler.cfg_scale (config or --cfg-options)')
        drawing = evaluation_sampler_cfg(drawing)     # what evaluation_sampler() draws with
    except (ConfigError, FileNotFoundError, UsageError) as e:
        return fail(e)
    # -- build (models, metric heads, extractor, samplers), still before sampling ---------------
    try:
        with DefaultScope.overwrite_default_scope('vargo'):
            model = MODELS.build(cfg.model)
            samplers = [model.sampler.evaluation_sampler()] + [
                checked_build(dict(drawing, cfg_scale=s), SAMPLERS) for s in scales[1:]]
        if args.checkpoint:
            load_policy_checkpoint(model.policy, args.checkpoint)
        metric_heads = build_metric_heads(eval_cfg.get('metric_heads') or {})
        if fidelity is not None:
            fidelity.prepare()
        protocol = evaluation_protocol(
            drawing=drawing, samplers=samplers, model=model, eval_cfg=eval_cfg, splits=splits,
            sampling=dict(seed=args.seed, samples_per_condition=per_condition,
                          max_conditions=max_conditions, batch_conditions=args.batch_conditions),
            fidelity=fidelity)
    except (ConfigError, FileNotFoundError, UsageError) as e:
        return fail(e)
    model.eval()
    name = os.path.splitext(os.path.basename(args.config))[0]
    tag = 'base' if not args.checkpoint else os.path.splitext(os.path.basename(args.checkpoint))[0]
    out_dir = args.out or os.path.join('work_dirs', name, f'eval_{tag}')
    os.makedirs(out_dir, exist_ok=True)
    torch.manual_seed(args.seed)
    results = {}
    scored = {**{n: h.evaluation_head() for n, h in model.reward_heads.items()}, **metric_heads}
    multi = bool(args.cfg_scales)
    for sampler in samplers:
        model.sampler = sampler
        scale = sampler.logprob_spec().cfg_scale
        for split in splits:
            key = f'{split}@cfg{scale:g}' if multi else split
            with DefaultScope.overwrite_default_scope('vargo'):
                dataset = DATASETS.build(eval_cfg.splits[split])
            t0 = time.perf_counter()
            metrics, rollout = evaluate_split(
                model, dataset, per_condition=per_condition,
                batch_conditions=args.batch_conditions, seed=args.seed,
                max_conditions=max_conditions,
                metric_heads=metric_heads)
            metrics['cfg_scale'] = float(scale)
            if fidelity is not None:
                metrics.update({f'fidelity/{k}': float(v) for k, v in
                                fidelity(rollout.images, split).items()})
            metrics['time_s'] = time.perf_counter() - t0
            results[key] = metrics
            write_head_records(scored, out_dir, key)
            rows = min(8, metrics['num_conditions'])
            imgs = rollout.images.view(-1, per_condition, *rollout.images.shape[1:])[:rows, :8]
            grid = f'grid_{split}_cfg{scale:g}.png' if multi else f'grid_{split}.png'
            save_png(make_grid(imgs.flatten(0, 1), nrow=imgs.shape[1]),
                     os.path.join(out_dir, grid))
    record = dict(config=args.config, checkpoint=args.checkpoint, seed=args.seed,
                  samples_per_condition=per_condition)
    if multi:
        record['cfg_scales'] = [float(s.logprob_spec().cfg_scale) for s in samplers]
    else:
        record['cfg_scale'] = model.sampler.logprob_spec().cfg_scale
    record['results'] = results
    record['protocol'] = protocol
    with open(os.path.join(out_dir, 'eval.json'), 'w') as f:
        json.dump(record, f, indent=2)
    print_table(results)
    print_head_summaries(scored, results)
    print('\n'.join(eval_protocol.format_protocol(protocol)))
    print(f'wrote {out_dir}/eval.json and grid_<split>{"_cfg<S>" if multi else ""}.png')
    return 0


if __name__ == '__main__':
    sys.exit(main())
