"""The run record (JSON) and the model card (markdown) every Shapes pretrainer writes."""
from __future__ import annotations

import json
import os
from typing import Any


def write_json(obj: Any, path: str) -> None:
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        json.dump(obj, f, indent=1, sort_keys=False)
        f.write('\n')
    os.replace(tmp, path)


def _fmt(v) -> str:
    if v is None:
        return 'n/a'
    if isinstance(v, float):
        return f'{v:.3f}'
    return str(v)


def _eval_table(res: dict) -> list[str]:
    """Markdown rows of ShapesEval summaries keyed by a label."""
    keys = ['n', 'soft', 'strict', 'clause/object', 'clause/count', 'clause/position',
            'kind/single', 'kind/count', 'kind/binding', 'kind/position', 'fid']
    present = [k for k in keys if any(k in r for r in res.values())]
    lines = ['| set | ' + ' | '.join(present) + ' |',
             '|---|' + '---|' * len(present)]
    for label, r in res.items():
        lines.append(f'| {label} | ' + ' | '.join(_fmt(r.get(k)) for k in present) + ' |')
    return lines


def write_card(rec: dict, path: str, spec) -> None:
    """Render the model card (markdown) of a run record.

    ``spec`` is the subcommand's class (a :class:`~.loop.Pretrainer` or the text-encoder
    writer): its ``card_title`` opens the card, its ``card_kind`` picks the evaluation section
    (``'reconstruction'`` of a tokenizer, ``card_noun`` naming it; ``'samples'`` of a generator of
    ``task``; ``'text-encoder'``).
    """
    name = rec['name']
    w = rec['weights']
    kind = spec.card_kind
    lines = [f'# {name}', '']
    lines += [spec.card_title, '',
              f'- config: `{rec["config"]}`',
              f'- command (from the repository root): `{rec["command"]}`',
              *([f'- run as: `{rec["run_command"]}` (the same training; `--out` and the '
                  f'evaluation options only change where the weights went and what was '
                  f'measured during the run; the file was then copied here byte for byte, so '
                  f'the numbers below are those of the shipped file)']
                if rec.get('run_command') and rec['run_command'] != rec['command'] else []),
              *([f'- evaluation below measured by: `{rec["evaluation_command"]}`']
                if rec.get('evaluation_command') else []),
              f'- seed {rec["seed"]}, {rec["steps"]} steps'
              + (f' of batch {rec["batch_size"]}' if rec.get('batch_size') else ''),
              f'- weights: `{w["file"]}`, {w["bytes"] / 1e6:.2f} MB, stored as {w["stored_dtype"]}'
              + (' (trained in float32, rounded to float16 for shipping; every number below is '
                 'measured on the float16 file loaded into float32 modules)'
                 if w['stored_dtype'] == 'float16' else ''),
              f'- wall time: {rec["train_wall_time_s"]:.0f} s '
              + ('to build and write' if kind == 'text-encoder' else 'training')
              + (f' + {rec["eval_wall_time_s"]:.0f} s evaluation' if 'eval_wall_time_s' in rec
                 else '') + f' on {rec.get("threads", 2)} CPU threads (shared machine)']
    if rec.get('optimizer'):
        o = rec['optimizer']
        lines.append(f'- optimiser: AdamW lr {o["lr"]:g}, betas {tuple(o["betas"])}, weight decay '
                     f'{o["weight_decay"]:g} (matrices only), {o["warmup"]} warm-up steps then '
                     f'{o["schedule"]}, '
                     f'grad clip {o["grad_clip"]:g}')
    if rec.get('final_loss'):
        fl = ', '.join(f'{k} {v:.4f}' for k, v in rec['final_loss'].items()
                       if k not in ('grad_norm', 'restarted'))
        lines.append(f'- final loss (mean over the last {rec["final_loss_window"]} steps): {fl}')
    if rec.get('data'):
        lines.append(f'- data: {rec["data"]}')
    if rec.get('loss'):
        lines.append(f'- loss: {rec["loss"]}')
    if rec.get('notes'):
        lines.append(f'- notes: {rec["notes"]}')
    arch = rec.get('architecture', {})
    if arch:
        shown = {k: v for k, v in arch.items() if k not in ('token_ids', 'vocabulary')}
        lines.append(f'- architecture: `{json.dumps(shown)}`')
    lines += ['', '## Evaluation', '']
    ev = rec['evaluation']
    if kind == 'reconstruction':
        tok = spec.card_noun
        lines.append(f'ShapesEval of {tok} reconstructions ({ev["eval_images"]}); the reward '
                     f'ceiling of every model decoding through this {tok}. Ground-truth images '
                     f'score {ev["c2i"]["ground_truth_strict"]:.3f} / '
                     f'{ev["t2i"]["ground_truth_strict"]:.3f} strict (c2i / t2i).')
        lines.append('')
        lines += _eval_table({f'{t} reconstructions': {**ev[t]['reconstruction'],
                                                       'fid': ev[t].get('rfid', {}).get('fid')}
                              for t in ('c2i', 't2i')})
        lines.append('')
        codes = (f'codes used on these images: {ev["codebook_used"]} of {ev["codebook_size"]}'
                 if 'codebook_used' in ev else
                 f'reconstructions of the posterior means; scaled latents (scale_factor '
                 f'{ev["scale_factor"]:g}) on these images: std {ev["latent_std"]:.3f} (per '
                 f'channel {ev["latent_channel_std"]}), mean |channel mean| '
                 f'{ev["latent_abs_mean"]:.3f}; unit-std scale_factor '
                 f'{ev["unit_std_scale_factor"]:g}')
        lines.append(f'L1 {ev["c2i"]["l1"]:.4f} / {ev["t2i"]["l1"]:.4f}, PSNR '
                     f'{ev["c2i"]["psnr"]:.1f} / {ev["t2i"]["psnr"]:.1f} dB (c2i / t2i); '
                     f'{codes}. FID (here rFID: reconstructions vs the shipped '
                     f'real statistics of the eval split) is from '
                     f'`vargo.components.benchmarks.shapes_fidelity`.')
        errs = {ev[t].get('rfid', {}).get('fid_error') for t in ('c2i', 't2i')} - {None}
        if errs:
            lines.append(f'FID not measured: {errs.pop()}')
    elif kind == 'text-encoder':
        lines.append(f'Not trained: {ev["features"]} features, RMS {ev["feature_rms"]} on real '
                     f'tokens. Token ids: `{json.dumps(arch.get("token_ids"))}`.')
    else:
        s = ev['sampler']
        lines.append(f'Sampled with `{json.dumps(s)}` (the config\'s sampler), seed '
                     f'{ev["sample_seed"]} (`BatchRNG`); ShapesEval of the samples '
                     f'(`vargo.components.rewards.shapes_eval.score_images`). '
                     + ('c2i: every class, `per_condition` samples each.' if spec.task == 'c2i'
                        else 't2i: `ShapesPromptDataset(split, num_prompts=conditions, seed=0)` '
                             '(kind-balanced: single, count, binding, position), '
                             '`per_condition` samples each; "eval" are the held-out '
                             'compositions.'))
        lines.append('FID: samples vs the shipped real statistics of the same task and split.')
        lines.append('')
        main = ev['main']
        lines += _eval_table({f'{sp} (cfg {s["cfg_scale"]:g})': r for sp, r in main.items()})
        errs = {r.get('fid_error') for r in main.values()} - {None}
        if errs:
            lines += ['', f'FID not measured: {errs.pop()}']
        others = {k: v for k, v in ev.items() if k.startswith('cfg_')}
        if others:
            lines += ['', 'Other CFG scales (same seed, ShapesEval only):', '']
            lines += _eval_table({f'{sp} ({k.replace("_", " ")})': r
                                  for k, v in others.items() for sp, r in v.items()})
    if rec.get('evaluations_during_training'):
        lines += ['', '## During training (quick evaluations, small samples)', '']
        during = {json.dumps(e['sampler']) for e in rec['evaluations_during_training']
                  if 'sampler' in e and e['sampler'] != ev.get('sampler')}
        if during:   # the run sampled with another setting than the card's (var-c2i)
            lines += [f'Sampled with `{during.pop()}` (the config\'s sampler during the run).', '']
        rows = {}
        for e in rec['evaluations_during_training']:
            if kind == 'reconstruction':
                rows[f'step {e["step"]}'] = {'c2i strict': e['c2i']['reconstruction']['strict'],
                                            't2i strict': e['t2i']['reconstruction']['strict']}
            else:
                for sp, r in e['main'].items():
                    rows[f'step {e["step"]} {sp}'] = r
        if kind == 'reconstruction':
            lines += ['| step | c2i strict | t2i strict |', '|---|---|---|']
            lines += [f'| {k} | {_fmt(v["c2i strict"])} | {_fmt(v["t2i strict"])} |'
                      for k, v in rows.items()]
        else:
            lines += _eval_table(rows)
    if rec.get('log'):
        lines += ['', f'Loss log: `{name}.json` (`log`, one row per logged step).']
    lines.append('')
    with open(path, 'w') as f:
        f.write('\n'.join(lines))
