"""One self-contained HTML page per run: ``<work_dir>/report.html`` (``tools/report.py``).

Everything is read back from the work dir, so the page can be rebuilt at any time:

* the config as run (``<work_dir>/*.py``, else the newest ``<timestamp>/vis_data/config.py``);
* the environment: the ``run environment:`` line :class:`RunReportHook` writes to the log
  (torch, Python, CPU, threads) and a ``run.json`` record's machine fields, else MMEngine's
  ``Python:`` / ``PyTorch:`` lines;
* curves of the main scalars of every ``<timestamp>/vis_data/scalars.json`` (a resumed run's
  files merged, later values winning per step): reward means, KL, entropy, grad_norm and every
  ``monitor/`` statistic, drawn with matplotlib;
* ``grids/preview_before.png``, ``grids/preview_after.png`` and the newest
  ``grids/samples_iter*.png``;
* every ``eval.json`` under the work dir, as tables, each with its evaluation protocol
  (:func:`vargo.core.eval_protocol.format_protocol`) under it;
* the reward-hacking monitor's warning lines of the logs (:data:`vargo.core.monitor.WARNING_TAG`).

Images are embedded as base64 PNG and there are no scripts or external assets: the page opens
offline. :class:`RunReportHook` writes it at the end of every run (``after_run``); a failure
there is a logged warning, never a failed run.
"""
from __future__ import annotations

import base64
import glob
import html
import io
import json
import os
import platform
import re
import sys
from typing import Optional

from mmengine.hooks import Hook

from . import visualizer as _visualizer  # noqa: F401  (registers VargoVisualizer; see there)
from .eval_protocol import format_protocol
from .registry import HOOKS

__all__ = ['write_report', 'build_report', 'read_scalars', 'read_scalars_file',
           'environment_line', 'cpu_model', 'cpuinfo_field', 'RunReportHook', 'CURVE_KEYS']

#: scalars drawn (exact names or prefixes ending in '/'); reward heads' means are added
CURVE_KEYS = ('kl/mean', 'entropy/mean', 'grad_norm', 'policy/clip_frac', 'monitor/')
ENV_TAG = 'run environment:'


def cpuinfo_field(name: str, path: str = '/proc/cpuinfo') -> str:
    """The first ``name`` field of ``path`` (``/proc/cpuinfo``; e.g. ``model name``,
    ``vendor_id``), or ``''`` where there is none or the file cannot be read."""
    try:
        with open(path) as f:
            for line in f:
                if line.split(':', 1)[0].strip() == name:
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return ''


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; else what :mod:`platform` knows)."""
    return cpuinfo_field('model name') or platform.processor() or platform.machine()


def environment_line() -> str:
    """torch / Python versions, CPU, thread counts, OpenMP wait policy and heap setting
    (:mod:`vargo.core.heap`) of this process, on one line."""
    import torch

    from .heap import heap_setting
    cpu = cpu_model()
    heap = heap_setting()
    return (f'{ENV_TAG} torch {torch.__version__}, Python {platform.python_version()}, CPU '
            f'{cpu} ({os.cpu_count()} logical), torch threads {torch.get_num_threads()}, '
            f'OMP_NUM_THREADS={os.environ.get("OMP_NUM_THREADS", "unset")}, '
            f'OMP_WAIT_POLICY={os.environ.get("OMP_WAIT_POLICY", "unset")}, '
            f'heap {heap["setting"] if heap else "glibc (not set)"}')


def _run_dirs(work_dir: str) -> list[str]:
    """The ``<timestamp>`` directories of the work dir, oldest first."""
    return sorted(d for d in glob.glob(os.path.join(work_dir, '*'))
                  if os.path.isdir(os.path.join(d, 'vis_data')) or glob.glob(os.path.join(d, '*.log')))


def read_scalars_file(path: str, out: Optional[dict] = None) -> dict[str, dict[int, float]]:
    """``{name: {step: value}}`` of one ``scalars.json`` (MMEngine's one JSON object per line),
    merged into ``out`` (this file's values win)."""
    out = {} if out is None else out
    with open(path, encoding='utf-8') as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue   # a line cut by a kill
            step = row.get('step', row.get('iter'))
            if step is None:
                continue
            for key, value in row.items():
                if key not in ('step', 'iter') and isinstance(value, (int, float)):
                    out.setdefault(key, {})[int(step)] = float(value)
    return out


def read_scalars(work_dir: str) -> dict[str, dict[int, float]]:
    """``{name: {step: value}}`` of ``<work_dir>/scalars.json`` and every
    ``<timestamp>/vis_data/scalars.json`` (later files win)."""
    out: dict[str, dict[int, float]] = {}
    paths = [os.path.join(work_dir, 'scalars.json')]   # a copied-out record (configs/*/results)
    paths += [os.path.join(d, 'vis_data', 'scalars.json') for d in _run_dirs(work_dir)]
    for path in paths:
        if os.path.isfile(path):
            read_scalars_file(path, out)
    return out


def _logs(work_dir: str) -> list[str]:
    return [p for d in _run_dirs(work_dir) for p in sorted(glob.glob(os.path.join(d, '*.log')))]


def _log_lines(work_dir: str, needle: str) -> list[str]:
    lines = []
    for path in _logs(work_dir):
        with open(path, encoding='utf-8', errors='replace') as f:
            lines += [ln.rstrip('\n') for ln in f if needle in ln]
    return lines


def _run_record(work_dir: str) -> list[str]:
    """The machine fields of a ``run.json`` record (configs/*/results), if any."""
    path = os.path.join(work_dir, 'run.json')
    try:
        with open(path, encoding='utf-8') as f:
            rec = json.load(f)
    except (OSError, ValueError):
        return []
    keys = ('cpu', 'cpus', 'threads', 'concurrent_jobs', 'commit', 'train_seconds')
    return ['run.json: ' + ', '.join(f'{k} {rec[k]}' for k in keys if k in rec)] \
        if isinstance(rec, dict) else []


def _environment(work_dir: str) -> list[str]:
    found = _log_lines(work_dir, ENV_TAG)
    if found:
        return [found[-1].split(ENV_TAG, 1)[1].strip()] + _run_record(work_dir)
    if _run_record(work_dir):
        return _run_record(work_dir)
    lines = [ln.strip() for ln in _log_lines(work_dir, 'Python: ') + _log_lines(work_dir, 'PyTorch: ')
             if re.match(r'\s*(Python|PyTorch): ', ln)]
    return lines or ['not recorded in the log; this page was written with: '
                     + environment_line().split(ENV_TAG, 1)[1].strip()]


def _config_text(work_dir: str) -> tuple[str, str]:
    cands = sorted(glob.glob(os.path.join(work_dir, '*.py')))
    if not cands:
        cands = [p for d in reversed(_run_dirs(work_dir))
                 for p in [os.path.join(d, 'vis_data', 'config.py')] if os.path.isfile(p)][:1]
    if not cands:
        return '(none found)', ''
    with open(cands[0], encoding='utf-8', errors='replace') as f:
        return os.path.relpath(cands[0], work_dir), f.read()


def _png_data(data: bytes) -> str:
    return 'data:image/png;base64,' + base64.b64encode(data).decode('ascii')


def _img(path: str) -> Optional[str]:
    if not os.path.isfile(path):
        return None
    with open(path, 'rb') as f:
        return _png_data(f.read())


def _curve_series(scalars: dict) -> dict[str, dict[int, float]]:
    keys = [k for k in scalars if k.startswith('reward/') and k.endswith('/mean')]
    keys += [k for p in CURVE_KEYS for k in sorted(scalars)
             if (k.startswith(p) if p.endswith('/') else k == p)]
    return {k: scalars[k] for k in dict.fromkeys(keys)}


def _curves_png(series: dict) -> Optional[bytes]:
    if not series:
        return None
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    n = len(series)
    cols = min(4, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.5 * rows), squeeze=False)
    for ax, (key, points) in zip(axes.flat, series.items()):
        steps = sorted(points)
        ax.plot(steps, [points[s] for s in steps], lw=1.2, marker='.' if len(steps) < 30 else None)
        ax.set_title(key, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis('off')
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format='png', dpi=90)
    plt.close(fig)
    return buf.getvalue()


def _flatten(d, prefix: str = '') -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f'{prefix}{k}/'))
        else:
            out[f'{prefix}{k}'] = v
    return out


def _eval_tables(work_dir: str) -> list[str]:
    parts = []
    for path in sorted(glob.glob(os.path.join(work_dir, '**', 'eval.json'), recursive=True)):
        try:
            with open(path, encoding='utf-8') as f:
                data = json.load(f)
        except (OSError, ValueError) as err:
            parts.append(f'<p>{html.escape(path)}: unreadable ({html.escape(str(err))})</p>')
            continue
        data = data if isinstance(data, dict) else {'value': data}
        rows = ''.join(f'<tr><td>{html.escape(k)}</td><td>{html.escape(_fmt(v))}</td></tr>'
                       for k, v in _flatten({k: v for k, v in data.items() if k != 'protocol'})
                       .items())
        protocol = '\n'.join(format_protocol(data.get('protocol')))
        parts.append(f'<h3>{html.escape(os.path.relpath(path, work_dir))}</h3>'
                     f'<table>{rows}</table><pre class="protocol">{html.escape(protocol)}</pre>')
    return parts


def _fmt(v) -> str:
    return f'{v:.6g}' if isinstance(v, float) else json.dumps(v) if isinstance(v, list) else str(v)


_STYLE = ('body{font-family:sans-serif;margin:2em;max-width:75em}pre{background:#f4f4f4;'
          'padding:1em;overflow:auto;font-size:80%;max-height:40em}table{border-collapse:'
          'collapse;font-size:85%}td{border:1px solid #ccc;padding:2px 8px}img{max-width:100%;'
          'image-rendering:pixelated}.warn{color:#a00}figure{display:inline-block;margin:0 1em '
          '1em 0;vertical-align:top}')


def build_report(work_dir: str) -> str:
    """The HTML text of the report of ``work_dir``."""
    work_dir = os.path.abspath(work_dir)
    e = html.escape
    cfg_name, cfg_text = _config_text(work_dir)
    body = [f'<h1>Run report: {e(os.path.basename(work_dir))}</h1>',
            f'<p>Work dir: <code>{e(work_dir)}</code></p>',
            '<h2>Environment</h2><ul>'
            + ''.join(f'<li>{e(x)}</li>' for x in _environment(work_dir)) + '</ul>']
    warnings = _log_lines(work_dir, 'reward-hacking monitor:')
    body.append('<h2>Monitor warnings</h2>')
    body.append('<ul>' + ''.join(f'<li class="warn">{e(w)}</li>' for w in warnings) + '</ul>'
                if warnings else '<p>None in the log.</p>')
    curves = _curves_png(_curve_series(read_scalars(work_dir)))
    body.append('<h2>Curves</h2>')
    body.append(f'<img alt="curves" src="{_png_data(curves)}">' if curves
                else '<p>No scalars.json found.</p>')
    grids = os.path.join(work_dir, 'grids')
    samples = sorted(glob.glob(os.path.join(grids, 'samples_iter*.png')))
    figures = [('preview before training', os.path.join(grids, 'preview_before.png')),
               ('preview after training', os.path.join(grids, 'preview_after.png'))]
    if samples:
        figures.append((f'latest rollout ({os.path.basename(samples[-1])})', samples[-1]))
    body.append('<h2>Samples</h2>')
    shown = [(t, _img(p)) for t, p in figures]
    body += [f'<figure><img alt="{e(t)}" src="{src}"><figcaption>{e(t)}</figcaption></figure>'
             for t, src in shown if src]
    if not any(src for _, src in shown):
        body.append('<p>No image grids found.</p>')
    tables = _eval_tables(work_dir)
    body.append('<h2>Evaluation</h2>')
    body += tables or ['<p>No eval.json under the work dir.</p>']
    body.append(f'<h2>Config as run</h2><p><code>{e(cfg_name)}</code></p><pre>{e(cfg_text)}</pre>')
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<title>vargo run report: {e(os.path.basename(work_dir))}</title>'
            f'<style>{_STYLE}</style></head><body>\n' + '\n'.join(body) + '\n</body></html>\n')


def write_report(work_dir: str, out: Optional[str] = None) -> str:
    """Write the report of ``work_dir`` to ``out`` (default ``<work_dir>/report.html``),
    atomically; returns its path."""
    out = out or os.path.join(work_dir, 'report.html')
    text = build_report(work_dir)
    tmp = out + '.tmp'
    with open(tmp, 'w', encoding='utf-8') as f:
        f.write(text)
    os.replace(tmp, out)
    return out


@HOOKS.register_module()
class RunReportHook(Hook):
    """Logs :func:`environment_line` at the start of the run and writes ``report.html`` at its
    end (rank 0); a report that fails is a warning, not a failed run."""

    priority = 'LOWEST'

    def before_run(self, runner) -> None:
        from . import dist as vdist
        if vdist.rank() == 0:
            runner.logger.info(environment_line())

    def after_run(self, runner) -> None:
        from . import dist as vdist
        if vdist.rank() != 0:
            return
        try:
            path = write_report(runner.work_dir)
            runner.logger.info(f'run report: {path}')
        except Exception as err:   # the report must never fail a finished run
            runner.logger.warning(f'run report not written: {type(err).__name__}: {err} '
                                  f'(rebuild it with `python tools/report.py {runner.work_dir}`)')
