"""Throughput of a policy config on this machine, against limits measured in the same run.

    python tools/benchmark.py CONFIG [--arch GPT-B] [--batch 8] [--steps N] [--repeat 3]
                              [--threads 2] [--out bench.json] [--skip-rollout]
                              [--config-scale-only] [--skip-update]
                              [--skip-iteration] [--reward-heads] [--gemm-size 2048]
                              [--bandwidth-mb 512] [--seed 0] [--group-sizes G ...]
                              [--op-profile] [--linear-kernels-ab ROUNDS]
                              [--cfg-options k=v ...]

The policy is the config's with random weights: every top-level ``policy.*checkpoint`` is set to
None and ``--arch`` replaces ``policy.arch``. Everything is built as tools/train.py builds it
(:func:`vargo.core.config.assemble`, then ``MODELS.build`` of the ``RLAlgorithm`` whose components
go through ``checked_build``), so the tool knows no model family: it uses ``policy.num_actions``
(or ``sampler.num_actions(policy)`` when the action count depends on the sampler, MAR),
``sampler.rollout``, ``policy.evaluate``, ``policy.decode`` and, when the policy has it,
``policy.flops_per_sample(spec)`` (the matmul FLOPs of one teacher-forced forward per sample;
``rollout=`` is passed too when the method takes it, as MAR's count depends on the rollout's
schedule and selection).

Measurements, each timed ``--repeat`` times after one untimed warm-up (median and min reported),
with ``torch.set_num_threads(--threads)``:

1. fp32 GEMM peak: ``torch.mm`` of two ``--gemm-size`` square fp32 matrices (2 n^3 FLOPs each),
   at least 5 timed runs, probed twice: before the workloads and again after them (a machine
   whose other jobs ease off, or whose clock rises, during the run is seen either way). The
   best rate of the two probes is the peak the update is compared with (``machine.gemm_peak``).
   A workload measured above 100% of it is reported with a warning (``warnings`` in the JSON,
   a line under the table): the probe, not the workload, is then what is off.
2. memory bandwidth: ``sum`` of a ``--bandwidth-mb`` fp32 tensor (bytes read) and ``copy_`` into
   another one (bytes read + written).
3. rollout tokens/s with CFG off (``cfg_scale=1``) and on (the config's scale, or 4.0 when the
   config samples without CFG), images not decoded, conditions encoded beforehand; ms per decode
   step; and the ms per step that reading the policy's trainable weights once (embedding tables
   excluded: a step reads only B of their rows) at the measured read bandwidth would take, the
   floor of a memory-bound decode step (KV-cache reads come on top). ``rollout.config_scale``
   is the config's own scale; ``--config-scale-only`` times only the rollout at that scale
   (``no_cfg`` when it is 1, else ``cfg``), as tools/thread_sweep.py does.
4. update: ``policy.evaluate(rollout, spec=<the config sampler's logprob_spec>)``, loss
   ``-mean(logp) - 0.01 * mean(entropy)``, ``backward``; tokens/s, GFLOP/s = 3 * forward FLOPs /
   (forward + backward time), and that as % of the GEMM peak.
5. peak memory of each phase: the resident-set high-water mark (``VmHWM`` of /proc/self/status),
   reset before the phase by writing 5 to /proc/self/clear_refs. Where that reset is unavailable
   the process-lifetime ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` is reported instead (the
   ``memory_method`` field says which). psutil has no peak and tracemalloc does not see torch's
   allocations, so neither is used.
6. iteration split: the config's ``RLAlgorithm`` runs one GRPO iteration on ``--batch`` samples
   in groups of the config's G (reduced to the largest divisor of ``--batch`` not above it):
   ``generate`` (sampling and, if the sampler decodes, image decoding) / ``score`` /
   ``compute_advantages`` / ``reference_eval`` / one ``train_step`` (loss, backward, optimizer
   step with the config's optim_wrapper). ``policy.decode`` is also timed alone (it is part of
   generate). The loop's ``time/rollout``, ``time/reward``, ``time/update`` are generate,
   score + advantages, and reference + train_step. Iteration ``i`` runs with the loop's context
   (``model.iteration_context(i)``). With the ``VMRSampler`` (VMR, docs/methods/var_rl.md) the
   phases alternate by iteration; the time of the reward's prefix completions
   (``vmr/completion_seconds``, part of score) is reported per timed prefix-phase iteration
   against that iteration's generate (``iteration.vmr``). With MAR-GRPO's multi-trajectory
   expectation (``MaskedSampler(mte_chains=S)``) the time of drawing the ``S`` extra chains
   (``append_extra_chains``, part of generate) is reported per iteration, with its share of the
   iteration (``iteration.mte``); their evaluation in the update is part of reference and
   train_step. The whole MTE cost is the ratio of this iteration to the same config's with
   ``--cfg-options sampler.mte_chains=0`` and without the ``MultiTrajectorySelector``.
7. reward heads (``--reward-heads``): each of the config's reward heads and of
   ``eval_cfg.metric_heads`` is built again from its config (startup: the seconds of
   ``checked_build``, reading its weights from their local files, and the memory it adds) and
   scores one rollout of ``--batch`` decoded images from the config's policy ``--repeat`` times
   after a warm-up; per-image cost = the time of a call / ``--batch`` (the heads' files must
   exist: only the policy's checkpoints are replaced by random weights). ``metrics``: the
   head's own metrics of the last call (e.g. ``OcrReward``'s ``lines`` read per image, on which
   its cost depends).
8. log-prob and entropy memory (``--logp-memory ROWS VOCAB``): the peak memory above the start
   of one forward + backward of the categorical log-prob of the taken tokens and the entropy
   (loss ``-mean(logp) - 0.01 * mean(entropy)``) on random ``[g, ROWS, VOCAB]`` fp32 logits
   (``g = 2`` when the config's log-prob spec uses CFG, its scale, temperature and, in
   ``'rollout'`` mode, its top-k / top-p), in units of one ``[ROWS, VOCAB]`` fp32 tensor,
   for vargo's chunked :func:`~vargo.components.modules.categorical.categorical_logp_entropy`
   and for the plain composition (``cfg_mix``, ``log_softmax``, ``-(p * log p).sum``, the
   truncation as a ``-inf`` fill). The logits' own gradient (``g`` units) is part of both:
   vargo's needs nothing else of that size beyond the kept-set mask (bool) and ~4 MB chunks.
   Each is run once untimed before the measured run (the allocator's first-call growth), and
   glibc is told to mmap every allocation of 64 KiB or more (``exact_release``), so a freed
   temporary leaves the resident set at once and the peak counts only live tensors; this phase
   runs last, after the final GEMM probe, because the setting stays for the process.
   E.g. ``--logp-memory 2048 16384``: LlamaGen GPT-B's 8 x 256 tokens over 16384 codes.

9. group-size scaling (``--group-sizes G1 G2 ...``): the iteration of item 6 (its five phases,
   without the separate image decoding) at each group size, on the same ``--batch`` / G
   conditions, after one warm-up per size, ``--repeat`` rounds interleaving the sizes (each
   round in a rotated order, so a drifting machine spreads over all). Reported per size: the
   seconds (median, range) and seconds per sample; and a least-squares line
   ``seconds = fixed + per_sample * samples`` with R^2, the largest residual relative to its
   point, and the marginal seconds per sample between consecutive sizes (an iteration linear in
   the group size has a flat marginal cost; rising ones show a super-linear part).
10. operator profile (``--op-profile``): one rollout at the config's scale (after a warm-up),
    one ``policy.decode`` of its tokens and one update step (item 4's loss), each run twice
    under ``torch.profiler``, once counting FLOPs and once timing (FLOP counting slows some
    operators and not others): the matrix products (``mm``, ``addmm``, ``bmm``,
    ``baddbmm`` and the convolutions with the profiler's FLOPs, outermost only and timed with
    its children, plus oneDNN's linear on reordered weights from its shapes) by operator,
    their share of the phase's CPU time, GFLOP/s and % of the run's GEMM peak; and the 12
    operators with the most self time. This is where the "dominant products at N% of the
    peak" numbers come from. The products are also grouped by their rows M (``by_rows``:
    fewer than 64, 64-255, 256 or more; the two passes' calls paired in call order), which
    separates small-M work (a decode step, MAR's diffusion head) from full-sequence products,
    and the 2-D convolutions by shape (``by_conv_shape``: ``Cin->Cout kKhxKw at HxW``, slowest
    total first; the table prints the six largest), which locates a decoder's slow layers,
    and oneDNN's linears by shape (``by_linear_shape``: ``M x K @ N``, the table prints the
    eight largest), which separates an update's forward, input-gradient and weight-gradient
    products.
11. training linear kernels (``--linear-kernels-ab ROUNDS``): item 4's update step with the
    policy's :class:`~vargo.components.modules.onednn_linear.OneDnnLinear` layers (the
    policies' ``onednn_linears`` option, ``'auto'`` by default for LlamaGen, VAR, MAR and the
    VQGAN transformer, i.e. on unless the CPU is Intel's; set ``policy.onednn_linears=True``
    where it is off) against the same layers as plain
    ``nn.Linear`` (``F.linear``: MKL's ``mm`` / ``addmm`` on x86 CPUs), on the same weights and
    rollout, interleaved for ROUNDS rounds after one warm-up of each (the order alternates by
    round). All-zero weight matrices (zero-initialised output layers, which would make every
    gradient behind them zero) are filled with N(0, 0.02^2) for the comparison and zeroed
    after (``zero_weights_filled``). Reported: seconds of each (median, range), the ratio
    plain / oneDNN per round (median, range), how the two kernels' gradients differ
    (:func:`gradient_difference`: the largest per-tensor relative difference and its tensor,
    the largest difference against the largest gradient, NaN / infinite elements) and how many
    layers were compared.

Decode steps: a sampler or policy with ``num_steps`` generates its A actions in that many steps
(VAR: one step per scale, all of a scale's tokens at once; MAR: the sampler's ``num_iter`` AR
steps; ``action_step`` of a rollout names each action's step); otherwise every action is a step
(LlamaGen). ``ms_per_step`` is per decode step and ``tokens_per_s`` counts tokens: actions divided
by the sampler's ``actions_per_token`` (1 for discrete tokens; MAR: a committed token is K =
num_sampling_steps - 1 stochastic head transitions, the actions, reported as
``head_transitions_per_s``; the deterministic last head step of each token is not counted).

``--steps N`` (fewer than the policy's decode steps S) times only the last N decode steps: each
timed rollout continues an earlier one from its first S - N steps (``sampler.rollout(prefix=...,
stop_at_step=S - N)``), so its time also holds one prefill of those steps' actions and the ms per
step is an upper bound. The default times whole rollouts.

Janus-Pro at 1B size with random weights (its real architecture through transformers; a
word-level tokenizer; JPEG reward, no files): ``python tools/benchmark.py
configs/stage/janus-tiny_stage_jpeg.py --arch Janus-Pro-1B`` (about 2.1B parameters, 8.3 GB in
fp32 before activations; ``--arch Janus-Pro-7B`` likewise). Its FLOP count takes the rollout's
prompt length into account.

Output: a fixed-width table on stdout and ``--out`` (JSON) with every number, the config, arch,
batch, threads, torch version, CPU model and the load average before and after the run (other
processes on the machine change every number here; check it).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import sys
import time
from typing import Any, Callable, NamedTuple, Optional

os.environ.setdefault('HF_HUB_OFFLINE', '1')

from mmengine.config import DictAction  # noqa: E402

from vargo.core.run_report import cpu_model  # noqa: E402,F401  (also bench_official's)

#: weight of the entropy bonus in the benchmark's update loss (only its cost matters)
ENTROPY_COEF = 0.01


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('config', help='a vargo config (its policy is built with random weights)')
    p.add_argument('--arch', help='replace policy.arch, e.g. GPT-B')
    p.add_argument('--batch', type=int, default=8, help='samples per rollout and update')
    p.add_argument('--steps', type=int, default=None,
                   help='decode steps to time (default: all of them, whole rollouts)')
    p.add_argument('--repeat', type=int, default=3, help='timed repetitions of each measurement')
    p.add_argument('--threads', type=int, default=2, help='torch.set_num_threads')
    p.add_argument('--out', default='bench.json', help='JSON file of all numbers')
    p.add_argument('--skip-rollout', action='store_true', help='skip the rollout throughput')
    p.add_argument('--config-scale-only', action='store_true',
                   help="time the rollout at the config's CFG scale only (not also at 1 / 4)")
    p.add_argument('--skip-update', action='store_true', help='skip the update throughput')
    p.add_argument('--skip-iteration', action='store_true', help='skip the iteration split')
    p.add_argument('--reward-heads', action='store_true',
                   help="time the startup and per-image cost of the config's reward heads and "
                        'eval_cfg.metric_heads')
    p.add_argument('--logp-memory', type=int, nargs=2, metavar=('ROWS', 'VOCAB'),
                   help='measure the peak memory of the log-prob + entropy forward/backward on '
                        'ROWS x VOCAB logits, vargo vs the plain composition (item 8)')
    p.add_argument('--group-sizes', type=int, nargs='+', metavar='G',
                   help='time the iteration at each group size G with the same conditions '
                        '(--batch / the built G of them) and fit a line (item 9)')
    p.add_argument('--op-profile', action='store_true',
                   help='profile one rollout, one image decode and one update by operator: the '
                        "matrix products' GFLOP/s and share of the GEMM peak (item 10)")
    p.add_argument('--linear-kernels-ab', type=int, default=0, metavar='ROUNDS',
                   help='time the update with oneDNN training linears against F.linear, '
                        'interleaved for ROUNDS rounds (item 11)')
    p.add_argument('--gemm-size', type=int, default=2048, help='n of the n x n fp32 GEMM')
    p.add_argument('--bandwidth-mb', type=int, default=512,
                   help='size of the bandwidth test tensor (well above the caches)')
    p.add_argument('--seed', type=int, default=0, help='seed of the random weights and noise')
    p.add_argument('--cfg-options', nargs='+', action=DictAction,
                   help='override config entries, e.g. sampler.top_k=100')
    args = p.parse_args(argv)
    for name in ('batch', 'repeat', 'threads', 'gemm_size', 'bandwidth_mb'):
        if getattr(args, name) < 1:
            p.error(f'--{name.replace("_", "-")}={getattr(args, name)} must be >= 1')
    if args.steps is not None and args.steps < 1:
        p.error(f'--steps={args.steps} must be >= 1 (or omitted to time whole rollouts)')
    if args.group_sizes is not None:
        bad = [g for g in args.group_sizes if g < 2]
        if bad:
            p.error(f'--group-sizes {bad[0]}: a group needs at least 2 samples')
        if len(set(args.group_sizes)) < 2:
            p.error(f'--group-sizes {" ".join(map(str, args.group_sizes))}: give at least two '
                    'different sizes to fit a line')
        args.group_sizes = sorted(set(args.group_sizes))
    if args.logp_memory and min(args.logp_memory) < 1:
        p.error(f'--logp-memory {args.logp_memory[0]} {args.logp_memory[1]}: ROWS and VOCAB '
                'must be >= 1')
    if args.linear_kernels_ab < 0:
        p.error(f'--linear-kernels-ab {args.linear_kernels_ab}: ROUNDS must be >= 1 (0 = off)')
    return args


# ---------------------------------------------------------------------------------------------
# timing and memory helpers
# ---------------------------------------------------------------------------------------------

def timed(fn: Callable[[], Any], repeat: int, warmup: int = 1) -> tuple[list[float], Any]:
    """Seconds of ``repeat`` calls of ``fn`` after ``warmup`` untimed ones, and the last result."""
    out = None
    for _ in range(warmup):
        out = fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return times, out


def stats(values: list[float]) -> dict:
    """``{'median', 'min', 'max', 'values'}`` of timings (seconds or ms)."""
    return {'median': statistics.median(values), 'min': min(values), 'max': max(values),
            'values': list(values)}


def rate(work: float, times: dict) -> dict:
    """``work / time`` at the median and at the best (minimum) time."""
    return {'median': work / times['median'], 'best': work / times['min']}


class PeakMemory:
    """Peak resident memory of a phase (see the module doc, item 5)."""

    def __init__(self):
        self.method = ('VmHWM (/proc/self/status), reset per phase via /proc/self/clear_refs'
                       if self._reset() else
                       'resource.getrusage ru_maxrss (process-lifetime peak; no per-phase reset)')
        self._start = 0.0

    @staticmethod
    def _reset() -> bool:
        try:
            with open('/proc/self/clear_refs', 'w') as f:
                f.write('5')
            return True
        except OSError:
            return False

    @staticmethod
    def _status_mb(field: str) -> Optional[float]:
        try:
            with open('/proc/self/status') as f:
                for line in f:
                    if line.startswith(field + ':'):
                        return int(line.split()[1]) / 1024.0
        except OSError:
            pass
        return None

    def rss_mb(self) -> float:
        rss = self._status_mb('VmRSS')
        return rss if rss is not None else self.peak_mb()

    def peak_mb(self) -> float:
        hwm = self._status_mb('VmHWM')
        if hwm is not None:
            return hwm
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0   # KiB on Linux

    def start(self) -> None:
        self._reset()
        self._start = self.rss_mb()

    def stop(self) -> dict:
        peak = self.peak_mb()
        return {'peak_rss_mb': peak, 'peak_above_start_mb': max(0.0, peak - self._start)}


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


# ---------------------------------------------------------------------------------------------
# machine limits
# ---------------------------------------------------------------------------------------------

#: timed runs of each GEMM-peak probe at least (``--repeat`` if larger): the peak is a best-of,
#: and a best of 2 or 3 on a shared machine under-reads it
GEMM_PROBE_REPEATS = 5


def bench_gemm(n: int, repeat: int) -> dict:
    """fp32 ``n x n`` matrix products, ``max(repeat, GEMM_PROBE_REPEATS)`` timed runs of about
    0.3 s each, with every CPU kernel torch offers here: ``torch.mm`` and, where the build has
    it, oneDNN's linear on a once-reordered weight (what the raster decode path uses); the
    faster kernel's rate is the probe's (``kernels`` has each one's)."""
    import torch
    a, b = torch.randn(n, n), torch.randn(n, n)
    c = torch.empty(n, n)
    kernels = {'mm': lambda: torch.mm(a, b, out=c)}
    try:
        from vargo.components.modules.packed_linear import packed_linear_supported
        if packed_linear_supported():
            packed = torch.ops.mkldnn._reorder_linear_weight(b.t().contiguous(), n)
            kernels['onednn_packed'] = lambda: torch.ops.mkldnn._linear_pointwise(
                a, packed, None, 'none', [], '')
    except (ImportError, RuntimeError):
        pass
    results = {}
    for name, kernel in kernels.items():
        t0 = time.perf_counter()
        for _ in range(2):
            kernel()
        per = (time.perf_counter() - t0) / 2
        calls = max(1, min(200, round(0.3 / max(per, 1e-6))))

        def run(kernel=kernel, calls=calls):
            for _ in range(calls):
                kernel()

        times, _ = timed(run, max(repeat, GEMM_PROBE_REPEATS))
        t = stats([x / calls for x in times])
        results[name] = {'calls_per_run': calls, 'time_s': t,
                         'gflops': rate(2 * n ** 3 / 1e9, t)}
    best = max(results, key=lambda k: results[k]['gflops']['best'])
    return {'size': n, 'kernel': best, **results[best],
            'kernels': {k: r['gflops'] for k, r in results.items()}}


def gemm_peak(probes: list[dict]) -> dict:
    """The best GEMM rate over the probes (``bench_gemm`` results) and which probe gave it."""
    best = max(range(len(probes)), key=lambda i: probes[i]['gflops']['best'])
    return {'gflops': probes[best]['gflops']['best'], 'probe': best,
            'probes_gflops': [p['gflops']['best'] for p in probes]}


def fraction_of_peak(res: dict) -> list[str]:
    """Fill ``update.pct_of_gemm_peak`` from ``machine.gemm_peak``; return a warning for every
    percentage above 100 (the probe under-read the peak: a noisy machine, or kernels at the
    workload's shapes faster than at the probe's)."""
    peak = res['machine']['gemm_peak']['gflops']
    up = res.get('update')
    warnings = []
    for phase, prof in (res.get('op_profile') or {}).items():
        products = prof['products']
        if products['gflops'] and peak:
            products['pct_of_gemm_peak'] = 100 * products['gflops'] / peak
            for row in [*products['by_op'].values(), *(products.get('by_rows') or {}).values(),
                        *(products.get('by_conv_shape') or {}).values(),
                        *(products.get('by_linear_shape') or {}).values()]:
                row['pct_of_gemm_peak'] = 100 * row['gflops'] / peak if row['gflops'] else None
            if products['pct_of_gemm_peak'] > 100:
                warnings.append(f'the {phase} products ran at {products["pct_of_gemm_peak"]:.1f}%'
                                f' of the GEMM peak ({peak:.1f} GFLOP/s): the probe under-read '
                                f'the peak (see the update warning)')
    if up and up.get('gflops') and peak:
        up['pct_of_gemm_peak'] = {k: 100 * v / peak for k, v in up['gflops'].items()}
        over = {k: v for k, v in up['pct_of_gemm_peak'].items() if v > 100}
        if over:
            warnings.append(
                f'the update ran at {max(over.values()):.1f}% of the GEMM peak '
                f'({peak:.1f} GFLOP/s, best of probes {res["machine"]["gemm_peak"]["probes_gflops"]}'
                f'): above 100% means the peak probe under-read this machine (other jobs, clock '
                f'changes, or faster kernels at the update\'s shapes); rerun on a quiet machine '
                f'or with a larger --repeat before reading the percentage')
    return warnings


#: the matrix products whose FLOPs the profiler counts (it counts elementwise ``mul`` / ``add``
#: too, which are not products)
PRODUCT_OPS = ('aten::mm', 'aten::addmm', 'aten::bmm', 'aten::baddbmm', 'aten::conv1d',
               'aten::conv2d', 'aten::conv3d', 'aten::convolution', 'aten::_convolution',
               'aten::conv_transpose2d')
#: products the profiler does not count, as ``2 x rows x N x K`` from the input shapes
#: ``[..., K]`` and the weight ``[N, K]`` (oneDNN's linear on a reordered weight)
LINEAR_LIKE = ('mkldnn::_linear_pointwise',)


#: row buckets of :func:`op_profile`'s ``by_rows``: a product of M rows (the rows of its left
#: operand; a batched product counts every batch's rows) falls in the first bucket whose bound
#: exceeds M. Decode steps and MAR's diffusion head multiply a few dozen rows, full-sequence
#: forwards hundreds or thousands.
ROW_BUCKETS = ((64, 'rows < 64'), (256, 'rows 64-255'), (float('inf'), 'rows >= 256'))


def product_rows(name: str, shapes: list) -> Optional[int]:
    """Rows M of a matrix product from its input shapes (``None`` for a convolution or an
    unknown layout): ``mm [M, K] x [K, N]``, ``addmm (bias, [M, K], [K, N])``,
    ``bmm [b, M, K]`` (b M rows), ``baddbmm (input, [b, M, K], ...)``, a linear-like op
    ``x [..., K]``."""
    try:
        if name == 'aten::mm':
            return int(shapes[0][0])
        if name == 'aten::addmm':
            return int(shapes[1][0])
        if name == 'aten::bmm':
            return int(shapes[0][0] * shapes[0][1])
        if name == 'aten::baddbmm':
            return int(shapes[1][0] * shapes[1][1])
        if name in LINEAR_LIKE:
            return int(math.prod(shapes[0][:-1]))
    except (IndexError, TypeError):
        return None
    return None


def _row_bucket(rows: Optional[int]) -> str:
    if rows is None:
        return 'convolutions and other'
    return next(label for bound, label in ROW_BUCKETS if rows < bound)


def op_profile(fn: Callable[[], Any], top: int = 12) -> dict:
    """Two calls of ``fn`` under ``torch.profiler`` (module doc, item 10): the first counts the
    FLOPs of the matrix products (:data:`PRODUCT_OPS` as the profiler counts them, outermost
    only; :data:`LINEAR_LIKE` from their shapes), the second, with neither FLOP counting nor
    shapes, times them (with their children) and every operator by self time. Counting FLOPs
    in the timed pass would distort it: on MAR-B's MAE it took the forward from 5.7 s to 10.6 s
    (1 thread), the extra time landing on some operators and not others. ``fn``'s products must
    have the same shapes in both calls (a seeded rollout, a decode, an update). Returns the
    products by operator with their GFLOP/s and the ``top`` operators by self time;
    ``pct_of_gemm_peak`` is filled by :func:`fraction_of_peak`."""

    from torch.profiler import ProfilerActivity, profile

    def is_product(ev) -> bool:
        return ev.name in PRODUCT_OPS or ev.name in LINEAR_LIKE

    def outermost_products(events):
        for ev in events:
            if not is_product(ev):
                continue
            parent = ev.cpu_parent
            while parent is not None and not is_product(parent):
                parent = parent.cpu_parent
            if parent is None:
                yield ev

    def flops_of(ev) -> float:
        if ev.name in PRODUCT_OPS:
            return float(ev.flops or 0)
        if len(ev.input_shapes) >= 2 and ev.input_shapes[0] and len(ev.input_shapes[1]) == 2:
            x, w = ev.input_shapes[0], ev.input_shapes[1]
            return 2.0 * math.prod(x[:-1]) * w[0] * w[1]
        return 0.0

    def in_order(events):
        return sorted(outermost_products(events), key=lambda ev: ev.time_range.start)

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True, with_flops=True) as prof:
        fn()
    sequence = [ProductCall(ev.name, flops_of(ev), product_rows(ev.name, ev.input_shapes),
                            conv_shape(ev.name, ev.input_shapes),
                            linear_shape(ev.name, ev.input_shapes))
                for ev in in_order(prof.events())]

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = list(prof.events())
    timed_sequence = [(ev.name, ev.cpu_time_total / 1000) for ev in in_order(events)]
    total_us = sum(ev.self_cpu_time_total for ev in events)
    counted: dict[str, list] = {}
    for call in sequence:
        cell = counted.setdefault(call.name, [0, 0.0])
        cell[0] += 1
        cell[1] += call.flops
    products: dict[str, dict] = {}
    for name, ms in timed_sequence:
        row = products.setdefault(name, {'calls': 0, 'ms': 0.0, 'gflop': 0.0})
        row['calls'] += 1
        row['ms'] += ms
    for name, row in list(products.items()):
        calls, flops = counted.get(name, (0, 0.0))
        if calls != row['calls']:
            raise RuntimeError(f'{name}: {calls} calls in the counting pass, {row["calls"]} in '
                               f'the timed one; the profiled function must repeat its products')
        if not flops:                  # a product the profiler gives no FLOPs for
            del products[name]
            continue
        row['gflop'] = flops / 1e9
        row['gflops'] = row['gflop'] / (row['ms'] / 1000) if row['ms'] else None
        row['share'] = row['ms'] * 1000 / total_us if total_us else None
    all_ms = sum(r['ms'] for r in products.values())
    all_gflop = sum(r['gflop'] for r in products.values())
    by_rows = _grouped(sequence, timed_sequence, total_us,
                       lambda call: _row_bucket(call.rows), track_rows=True)
    by_conv_shape = _by_shape(sequence, timed_sequence, total_us, lambda call: call.conv_shape)
    by_linear_shape = _by_shape(sequence, timed_sequence, total_us,
                                lambda call: call.linear_shape)
    by_self: dict[str, list] = {}
    for ev in events:
        cell = by_self.setdefault(ev.name, [0, 0.0])
        cell[0] += 1
        cell[1] += ev.self_cpu_time_total / 1000
    ops = [{'op': name, 'calls': n, 'self_ms': ms, 'share': ms * 1000 / total_us}
           for name, (n, ms) in sorted(by_self.items(), key=lambda kv: -kv[1][1])[:top]]
    return {'total_ms': total_us / 1000, 'flops_counted_in_a_separate_pass': True,
            'products': {'ms': all_ms, 'share': all_ms * 1000 / total_us if total_us else None,
                         'gflop': all_gflop,
                         'gflops': all_gflop / (all_ms / 1000) if all_ms else None,
                         'pct_of_gemm_peak': None, 'by_op': products, 'by_rows': by_rows,
                         'by_conv_shape': by_conv_shape,
                         'by_linear_shape': by_linear_shape},
            'top_ops': ops}


class ProductCall(NamedTuple):
    """One matrix product of :func:`op_profile`'s counting pass, in call order."""
    name: str
    flops: float
    rows: Optional[int]                 # :func:`product_rows`
    conv_shape: Optional[str]           # :func:`conv_shape`
    linear_shape: Optional[str]         # :func:`linear_shape`


def _grouped(sequence: list, timed_sequence: list, total_us: float,
             key_of: Callable[[ProductCall], Optional[str]],
             track_rows: bool = False) -> Optional[dict]:
    """The products grouped by ``key_of(call)`` (calls keyed None or without FLOPs left out):
    the two passes' calls matched one to one in call order (``None`` when their names differ
    at some position: then the calls cannot be paired); ``track_rows`` adds each group's
    ``rows_min`` / ``rows_max``."""
    if [call.name for call in sequence] != [name for name, _ in timed_sequence]:
        return None
    out: dict[str, dict] = {}
    for call, (_, ms) in zip(sequence, timed_sequence):
        key = key_of(call)
        if key is None or not call.flops:
            continue
        row = out.setdefault(key, {'calls': 0, 'ms': 0.0, 'gflop': 0.0})
        if track_rows:
            row.setdefault('rows_min', call.rows)
            row.setdefault('rows_max', call.rows)
            if call.rows is not None:
                row['rows_min'] = min(row['rows_min'], call.rows)
                row['rows_max'] = max(row['rows_max'], call.rows)
        row['calls'] += 1
        row['ms'] += ms
        row['gflop'] += call.flops / 1e9
    for row in out.values():
        row['gflops'] = row['gflop'] / (row['ms'] / 1000) if row['ms'] else None
        row['share'] = row['ms'] * 1000 / total_us if total_us else None
    return out


def conv_shape(name: str, shapes: list) -> Optional[str]:
    """``'Cin->Cout kKhxKw at HxW'`` of a 2-D convolution from its input shapes
    (``x [N, Cin, H, W]``, ``weight [Cout, Cin / groups, Kh, Kw]``); ``None`` for other ops."""
    if name != 'aten::conv2d':
        return None
    try:
        (_, cin, h, w), (cout, _, kh, kw) = shapes[0], shapes[1]
    except (IndexError, TypeError, ValueError):
        return None
    return f'{cin}->{cout} k{kh}x{kw} at {h}x{w}'


def linear_shape(name: str, shapes: list) -> Optional[str]:
    """``'M x K @ N'`` of a oneDNN linear (:data:`LINEAR_LIKE`: ``A [..., K]`` times
    ``B [N, K]^T``, M the rows of ``A``) from its input shapes; ``None`` for other ops. In an
    update the three products of a layer ``in -> out`` over ``T`` rows show as ``T x in @ out``
    (forward), ``T x out @ in`` (input gradient) and ``out x T @ in`` (weight gradient)."""
    if name not in LINEAR_LIKE:
        return None
    try:
        a, b = shapes[0], shapes[1]
        return f'{math.prod(a[:-1])} x {a[-1]} @ {b[0]}'
    except (IndexError, TypeError):
        return None


def _by_shape(sequence: list, timed_sequence: list, total_us: float,
              shape_of: Callable[[ProductCall], Optional[str]]) -> Optional[dict]:
    """:func:`_grouped` by a shape string (:func:`conv_shape`, :func:`linear_shape`), slowest
    total first; ``None`` when the passes cannot be paired or no product has such a shape."""
    out = _grouped(sequence, timed_sequence, total_us, shape_of)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]['ms'])) if out else None


def profile_phases(policy, sampler, cond, group_size: int, rollout=None) -> dict:
    """:func:`op_profile` of one rollout (the config's sampler and scale, no image decoding),
    one ``policy.decode`` of its tokens and one update (forward + backward, as item 4)."""
    import torch
    with torch.no_grad():
        sampler.rollout(policy, cond, group_size=group_size)            # warm-up
        out = {'rollout': op_profile(lambda: sampler.rollout(policy, cond, group_size=group_size))}
        if rollout is None:
            rollout = sampler.rollout(policy, cond, group_size=group_size)
        policy.decode(rollout)
        out['decode'] = op_profile(lambda: policy.decode(rollout))
    spec = sampler.logprob_spec()

    def update():
        policy.zero_grad(set_to_none=True)
        update_loss(policy, rollout, spec).backward()
    policy.train(True)
    with torch.enable_grad():
        update()
        out['update'] = op_profile(update)
    policy.zero_grad(set_to_none=True)
    return out


def bench_bandwidth(mb: int, repeat: int) -> dict:
    """Read (``sum``) and read+write (``copy_``) bandwidth of an ``mb`` MiB fp32 tensor."""
    import torch
    nbytes = mb * 2 ** 20
    src = torch.rand(nbytes // 4)
    dst = torch.empty_like(src)
    sums = max(1, round(2e9 / nbytes))     # about 2 GB per timed run
    copies = max(1, round(1e9 / nbytes))

    def read():
        for _ in range(sums):
            src.sum()

    def copy():
        for _ in range(copies):
            dst.copy_(src)

    t_read, _ = timed(read, repeat)
    t_copy, _ = timed(copy, repeat)
    tr = stats([x / sums for x in t_read])
    tc = stats([x / copies for x in t_copy])
    return {'bytes': nbytes, 'read_time_s': tr, 'copy_time_s': tc,
            'read_gbps': rate(nbytes / 1e9, tr), 'copy_gbps': rate(2 * nbytes / 1e9, tc)}


# ---------------------------------------------------------------------------------------------
# building
# ---------------------------------------------------------------------------------------------

def build(args):
    """``(cfg, model, group_size, n_conditions)``: the config's RLAlgorithm with random weights."""
    from mmengine.registry import DefaultScope

    from vargo.core.config import assemble
    from vargo.core.registry import MODELS, ConfigError
    from vargo.core.runner import load_config

    cfg = load_config(args.config, args.cfg_options)
    policy = cfg.get('policy')
    if policy is None:
        raise ConfigError(f'{args.config} has no policy')
    for key in list(policy.keys()):
        if key == 'checkpoint' or key.endswith('_checkpoint'):
            policy[key] = None                          # random weights, no files needed
    if args.arch is not None:
        policy['arch'] = args.arch
    cfg.train_cfg.samples_per_rank = args.batch
    cfg.train_cfg.minibatch_samples = None
    divisors = [d for d in range(2, min(cfg.group_size, args.batch) + 1) if args.batch % d == 0]
    if not divisors:
        raise ConfigError(f'--batch={args.batch} has no divisor in [2, group_size='
                          f'{cfg.group_size}]: GRPO groups need at least 2 samples; use an even '
                          f'--batch')
    cfg.group_size = divisors[-1]
    cfg = assemble(cfg)
    with DefaultScope.overwrite_default_scope('vargo'):
        model = MODELS.build(cfg.model)
    return cfg, model, cfg.group_size, args.batch // cfg.group_size


def conditions(cfg, n: int):
    """``n`` conditions spread over the config's condition dataset."""
    from mmengine.registry import DefaultScope
    from torch.utils.data import default_collate

    from vargo.core.loop import conditions_from_batch
    from vargo.core.registry import DATASETS

    with DefaultScope.overwrite_default_scope('vargo'):
        dataset = DATASETS.build(cfg.train_dataloader.dataset)
    items = [dataset[i * len(dataset) // n] for i in range(n)]
    return conditions_from_batch(default_collate(items))


def sampler_variant(cfg, **changes):
    """The config's sampler with ``changes`` (built through the checked registry)."""
    from vargo.core.registry import SAMPLERS, checked_build
    sampler_cfg = cfg.model.sampler.to_dict() if hasattr(cfg.model.sampler, 'to_dict') else dict(
        cfg.model.sampler)
    target = sampler_cfg
    if sampler_cfg.get('type') == 'VMRSampler':        # a wrapper: change the family sampler
        target = sampler_cfg['sampler'] = dict(sampler_cfg['sampler'])
    target.update(changes)
    return checked_build(sampler_cfg, SAMPLERS)


def action_sizes(policy, sampler) -> tuple[int, int, int]:
    """``(actions per sample, decode steps, actions per token)`` of ``sampler`` on ``policy``
    (see the module doc, 'Decode steps')."""
    actions = (sampler.num_actions(policy) if callable(getattr(sampler, 'num_actions', None))
               else policy.num_actions)
    steps = getattr(sampler, 'num_steps', None) or getattr(policy, 'num_steps', actions)
    return int(actions), int(steps), int(getattr(sampler, 'actions_per_token', 1))


def run_provenance() -> dict:
    """What a benchmark JSON records about the code and process setting it ran under: vargo's
    commit (``+dirty`` with local changes; None outside a git work tree) and the OpenMP wait
    policy in the environment."""
    from vargo.core.eval_protocol import git_commit
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return {'vargo_commit': git_commit(root),
            'omp_wait_policy': os.environ.get('OMP_WAIT_POLICY', 'unset')}


def decode_weights(policy) -> list:
    """The trainable weights a decode step reads in full (embedding tables excluded: a step
    reads one row of each)."""
    from torch import nn
    tables = {id(m.weight) for m in policy.modules() if isinstance(m, nn.Embedding)}
    return [p for p in policy.trainable_parameters() if id(p) not in tables]


def weight_bytes(policy) -> int:
    """Bytes of :func:`decode_weights`."""
    return sum(p.numel() * p.element_size() for p in decode_weights(policy))


# ---------------------------------------------------------------------------------------------
# phases
# ---------------------------------------------------------------------------------------------

def bench_rollout(policy, sampler, cond, group_size: int, args,
                  mem: PeakMemory) -> tuple[dict, Any]:
    """Rollout throughput of ``sampler`` (see the module doc, item 3)."""
    import torch

    from vargo.core.rng import BatchRNG

    actions, decode_steps, per_token = action_sizes(policy, sampler)   # VAR: scales; MAR: AR
    b = len(cond) * group_size
    continuation = args.steps is not None and args.steps < decode_steps
    steps = args.steps if continuation else decode_steps
    counter = iter(range(10 ** 9))

    def rng():
        return BatchRNG(args.seed, next(counter), b, rank=0, world_size=1)

    mem.start()
    with torch.no_grad():
        if continuation:
            prefix = sampler.rollout(policy, cond, group_size=group_size, rng=rng())

            def run():
                return sampler.rollout(policy, prefix.cond, group_size=1, rng=rng(),
                                       prefix=prefix, stop_at_step=decode_steps - steps)
        else:
            def run():
                return sampler.rollout(policy, cond, group_size=group_size, rng=rng())
        times, rollout = timed(run, args.repeat)
    t = stats(times)
    # actions generated in the timed steps (those of the last `steps` decode steps)
    step_of = rollout.action_step
    step_of = step_of if step_of.dim() == 1 else step_of[0]
    timed_actions = int((step_of >= decode_steps - steps).sum())
    tokens = timed_actions // per_token
    out = {
        'cfg_scale': sampler.logprob_spec().cfg_scale, 'samples': b, 'actions': actions,
        'decode_steps': decode_steps, 'steps_timed': steps, 'tokens_timed': tokens,
        'mode': 'continuation' if continuation else 'full',
        'prefill_actions': actions - timed_actions if continuation else 0,
        'time_s': t, 'tokens_per_s': rate(b * tokens, t),
        'ms_per_step': {'median': 1000 * t['median'] / steps, 'min': 1000 * t['min'] / steps},
        **mem.stop(),
    }
    if per_token > 1:
        out.update(actions_per_token=per_token, actions_timed=timed_actions,
                   head_transitions_per_s=rate(b * timed_actions, t))
    return out, rollout


def update_loss(policy, rollout, spec):
    """The benchmark's update loss: ``-mean(logp) - ENTROPY_COEF * mean(entropy)`` of the
    teacher-forced evaluation (only its cost matters)."""
    ev = policy.evaluate(rollout, spec=spec)
    loss = -ev.logp.mean()
    if ev.entropy is not None:
        loss = loss - ENTROPY_COEF * ev.entropy.mean()
    return loss


def bench_update(policy, rollout, spec, args, mem: PeakMemory, per_token: int = 1) -> dict:
    """Teacher-forced forward + backward throughput (see the module doc, item 4);
    ``per_token`` actions make one token. ``pct_of_gemm_peak`` is filled by
    :func:`fraction_of_peak` once the run's last GEMM probe is in."""
    import inspect

    import torch

    policy.train(True)
    fwd, bwd = [], []

    def step():
        policy.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        loss = update_loss(policy, rollout, spec)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        fwd.append(t1 - t0)
        bwd.append(t2 - t1)

    mem.start()
    with torch.enable_grad():
        times, _ = timed(step, args.repeat)
    policy.zero_grad(set_to_none=True)
    fwd, bwd = fwd[-args.repeat:], bwd[-args.repeat:]
    t = stats(times)
    b, a = rollout.batch_size, rollout.num_actions
    out = {
        'spec': {'mode': spec.mode, 'cfg_scale': spec.cfg_scale, 'uses_cfg': spec.uses_cfg,
                 'temperature': spec.temperature, 'top_k': spec.top_k, 'top_p': spec.top_p},
        'samples': b, 'actions': a, 'time_s': t, 'forward_s': stats(fwd),
        'backward_s': stats(bwd), 'tokens_per_s': rate(b * a // per_token, t),
        'flops_per_sample': None, 'flops_per_step': None, 'gflops': None,
        'pct_of_gemm_peak': None,
    }
    if per_token > 1:
        out.update(actions_per_token=per_token, tokens=a // per_token,
                   head_transitions_per_s=rate(b * a, t))
    if hasattr(policy, 'flops_per_sample'):
        extra = ({'rollout': rollout} if 'rollout' in inspect.signature(
            policy.flops_per_sample).parameters else {})
        per_sample = int(policy.flops_per_sample(spec, **extra))
        total = 3 * per_sample * b                 # forward + backward (2x forward)
        out.update(flops_per_sample=per_sample, flops_per_step=total,
                   gflops=rate(total / 1e9, t))
    out.update(mem.stop())
    return out


def bench_linear_kernels(policy, rollout, spec, rounds: int) -> dict:
    """Item 11 of the module doc: the update with the policy's ``OneDnnLinear`` layers against
    the same layers as plain ``nn.Linear``, interleaved; the layers' class is restored."""
    import torch
    from torch import nn

    from vargo.components.modules.onednn_linear import OneDnnLinear
    from vargo.core.registry import ConfigError

    layers = [m for m in policy.modules() if type(m) is OneDnnLinear]
    if not layers:
        raise ConfigError('--linear-kernels-ab: the policy has no oneDNN training linears (its '
                         "onednn_linears option is off (its default 'auto' is off on Intel CPUs), "
                         'its layers are all below the size floor or this torch has no oneDNN); '
                         'add --cfg-options policy.onednn_linears=True or drop the flag')
    names, params = zip(*[(n, p) for n, p in policy.named_parameters() if p.requires_grad])
    filled = fill_zero_weights(params)

    def step(onednn: bool) -> tuple[float, list]:
        for m in layers:
            m.__class__ = OneDnnLinear if onednn else nn.Linear
        policy.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        update_loss(policy, rollout, spec).backward()
        elapsed = time.perf_counter() - t0
        return elapsed, [None if p.grad is None else p.grad.detach().clone() for p in params]

    policy.train(True)
    times = {'plain': [], 'onednn': []}
    try:
        with torch.enable_grad():
            _, g_plain = step(False)
            _, g_dnn = step(True)
            diff = gradient_difference(names, g_plain, g_dnn)
            del g_plain, g_dnn
            for r in range(rounds):
                for onednn in ((False, True) if r % 2 == 0 else (True, False)):
                    times['onednn' if onednn else 'plain'].append(step(onednn)[0])
    finally:
        for m in layers:
            m.__class__ = OneDnnLinear
        policy.zero_grad(set_to_none=True)
        with torch.no_grad():
            for p in filled:
                p.zero_()
    ratios = [a / b for a, b in zip(times['plain'], times['onednn'])]
    return {'rounds': rounds, 'layers': len(layers),
            'plain_s': stats(times['plain']), 'onednn_s': stats(times['onednn']),
            'ratio_plain_over_onednn': {'median': statistics.median(ratios),
                                        'min': min(ratios), 'max': max(ratios)},
            'zero_weights_filled': len(filled), **diff}


def fill_zero_weights(params, std: float = 0.02, seed: int = 0) -> list:
    """Fill every all-zero weight matrix (2-D and up) of ``params`` with ``N(0, std^2)``
    (seeded) in place and return them. Zero-initialised output layers (LlamaGen's ``output``,
    the adaLN-zero gates and final layer of MAR's diffusion head) make every gradient behind
    them exactly zero at random initialisation, so a gradient comparison there would compare
    zeros; the products cost the same either way. The caller zeroes them again afterwards."""
    import torch
    gen = torch.Generator().manual_seed(seed)
    filled = [p for p in params if p.dim() >= 2 and not p.detach().any()]
    with torch.no_grad():
        for p in filled:
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * std)
    return filled


def gradient_difference(names, grads_a: list, grads_b: list) -> dict:
    """How far two lists of gradients (one per parameter of ``names``; None entries skipped)
    differ, over the elements finite in both:

    * ``max_relative_grad_difference``: the largest per-tensor ``max |a - b| / max |a|``, and
      ``max_relative_grad_tensor`` its parameter. A tensor whose exact gradient is zero
      (an attention key bias, which the softmax cancels) has only rounding noise in both, so
      this can be of order 1 there while every other tensor agrees to 1e-6;
    * ``grad_difference_relative_to_largest``: ``max |a - b|`` over all tensors divided by the
      largest ``|a|`` of all;
    * ``nonfinite_grad_elements``: elements NaN or infinite in either, which a plain maximum
      would hide (NaN compares false, so ``max(0.0, nan)`` is 0)."""
    rel, worst, diff_max, grad_max, nonfinite = 0.0, None, 0.0, 0.0, 0
    for name, a, b in zip(names, grads_a, grads_b):
        if a is None or b is None:
            continue
        finite = a.isfinite() & b.isfinite()
        nonfinite += int(finite.numel() - finite.sum())
        if not finite.any():
            continue
        a_f, b_f = a[finite], b[finite]
        d, m = float((a_f - b_f).abs().max()), float(a_f.abs().max())
        diff_max, grad_max = max(diff_max, d), max(grad_max, m)
        r = d / max(m, 1e-30)
        if worst is None or r > rel:
            rel, worst = r, name
    return {'max_relative_grad_difference': rel, 'max_relative_grad_tensor': worst,
            'grad_difference_relative_to_largest': diff_max / max(grad_max, 1e-30),
            'nonfinite_grad_elements': nonfinite}


ITERATION_PHASES = ('generate', 'score', 'advantages', 'reference', 'train_step')


def iteration_runner(model, cond, optim_wrapper, seed: int,
                     on_score: Optional[Callable[[int, dict], None]] = None):
    """A function running one GRPO iteration of ``model`` on ``cond`` (the loop's calls, in its
    order) and returning ``(seconds of each of ITERATION_PHASES, the rollout)``;
    ``on_score(i, rewards)`` sees each iteration's rewards. Iteration ``i`` runs with the
    loop's context."""
    from vargo.core.algorithm import MiniBatch
    counter = iter(range(10 ** 9))
    n_cond = len(cond)

    def iteration() -> dict:
        i = next(counter)
        ctx = model.iteration_context(i, seed=seed, num_conditions=n_cond)
        t = [time.perf_counter()]
        rollout = model.generate(cond, ctx)
        t.append(time.perf_counter())
        rewards = model.score(rollout, ctx)
        t.append(time.perf_counter())
        if on_score is not None:
            on_score(i, rewards)
        adv = model.compute_advantages(rewards, rollout)
        t.append(time.perf_counter())
        ref = model.reference_eval(rollout, n_cond)
        t.append(time.perf_counter())
        # the loop's minibatch context (group-weighted aggregations such as STAGE's need it)
        mb = MiniBatch(rollout=rollout, adv=adv, ref_eval=ref,
                       ctx=ctx.for_minibatch(rollout.action_mask), check_on_policy=True)
        model.train_step({'minibatch': mb}, optim_wrapper=optim_wrapper)
        t.append(time.perf_counter())
        return {name: t[k + 1] - t[k] for k, name in enumerate(ITERATION_PHASES)}, rollout
    return iteration


def build_optimizer(cfg, model):
    """The config's optim_wrapper around ``model``."""
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import DefaultScope
    with DefaultScope.overwrite_default_scope('vargo'):
        return build_optim_wrapper(model, cfg.optim_wrapper)


def bench_iteration(cfg, model, cond, args, mem: PeakMemory) -> dict:
    """One GRPO iteration's time split (see the module doc, item 6)."""
    optim_wrapper = build_optimizer(cfg, model)
    n_cond, g = len(cond), model.group_size
    parts = ITERATION_PHASES
    record: dict[str, list[float]] = {k: [] for k in parts + ('decode_images',)}
    vmr = callable(getattr(model.sampler, 'phase', None))     # VMRSampler: phases alternate
    vmr_record: list[tuple[str, float]] = []                  # (phase, completion seconds)
    mte = int(getattr(model.sampler, 'mte_chains', 0) or 0)   # MAR-GRPO's extra head chains
    mte_record: list[float] = []
    if mte:
        draw = model.sampler.append_extra_chains

        def timed_draw(*a, **kw):
            t0 = time.perf_counter()
            out = draw(*a, **kw)
            mte_record.append(time.perf_counter() - t0)
            return out
        model.sampler.append_extra_chains = timed_draw

    def on_score(i, rewards):
        if vmr:
            vmr_record.append((model.sampler.phase(i), sum(
                r.metrics.get('vmr/completion_seconds', 0.0) for r in rewards.values())))

    one = iteration_runner(model, cond, optim_wrapper, args.seed, on_score)

    def iteration():
        times, rollout = one()
        for name in parts:
            record[name].append(times[name])
        t0 = time.perf_counter()
        model.policy.decode(rollout)
        record['decode_images'].append(time.perf_counter() - t0)

    mem.start()
    try:
        timed(iteration, args.repeat)
    finally:
        if mte:
            del model.sampler.append_extra_chains            # the class's method again
    out: dict[str, Any] = {'group_size': g, 'samples': n_cond * g,
                           'decodes_images': bool(getattr(model.sampler, 'decode_images', False))}
    for name, values in record.items():
        out[f'{name}_s'] = stats(values[-args.repeat:])
    totals = [sum(record[p][-args.repeat:][i] for p in parts) for i in range(args.repeat)]
    out['total_s'] = stats(totals)
    med = {p: out[f'{p}_s']['median'] for p in parts}
    whole = sum(med.values())
    out['fraction'] = {p: v / whole for p, v in med.items()}
    out['loop_split_s'] = {'rollout': med['generate'],
                           'reward': med['score'] + med['advantages'],
                           'update': med['reference'] + med['train_step']}
    if mte:
        chains = stats(mte_record[-args.repeat:])
        out['mte'] = {'chains': mte, 'extra_chains_s': chains,
                      'extra_chains_over_iteration': chains['median'] / out['total_s']['median']}
    if vmr:
        out['vmr'] = vmr_cost(model.sampler, vmr_record[-args.repeat:],
                              record['generate'][-args.repeat:])
    out.update(mem.stop())
    return out


def bench_group_sizes(cfg, model, cond, args) -> dict:
    """Iteration time against the group size at a fixed number of conditions (module doc,
    item 9): rounds interleave the sizes (each round in a rotated order), after one warm-up
    iteration per size; a least-squares line ``seconds = fixed + per_sample * samples``. The
    model's own group size is restored afterwards."""
    optim_wrapper = build_optimizer(cfg, model)
    sizes = list(args.group_sizes)
    runs = {}
    record: dict[int, list[float]] = {g: [] for g in sizes}
    own = model.group_size
    try:
        for g in sizes:
            model.group_size = g
            runs[g] = iteration_runner(model, cond, optim_wrapper, args.seed)
            runs[g]()                                          # warm-up
        for r in range(args.repeat):
            for g in sizes[r % len(sizes):] + sizes[:r % len(sizes)]:
                model.group_size = g
                times, _ = runs[g]()
                record[g].append(sum(times.values()))
    finally:
        model.group_size = own
    n = len(cond)
    rows = [{'group_size': g, 'samples': n * g, 'seconds': stats(record[g]),
             'seconds_per_sample': statistics.median(record[g]) / (n * g)} for g in sizes]
    return {'conditions': n, 'sizes': rows, 'fit': linear_fit(
        [row['samples'] for row in rows], [row['seconds']['median'] for row in rows])}


def linear_fit(x: list[float], y: list[float]) -> dict:
    """Least squares ``y = fixed + per_sample * x``: both coefficients, R^2, the largest residual
    relative to its ``y`` and the marginal seconds per sample between consecutive points (rising
    marginal costs are what a super-linear iteration shows)."""
    n = len(x)
    mx, my = sum(x) / n, sum(y) / n
    sxx = sum((a - mx) ** 2 for a in x)
    slope = sum((a - mx) * (b - my) for a, b in zip(x, y)) / sxx if sxx else 0.0
    fixed = my - slope * mx
    resid = [b - (fixed + slope * a) for a, b in zip(x, y)]
    syy = sum((b - my) ** 2 for b in y)
    return {'fixed_s': fixed, 'per_sample_s': slope,
            'r2': 1 - sum(e * e for e in resid) / syy if syy else 1.0,
            'max_relative_residual': max(abs(e) / b for e, b in zip(resid, y)),
            'marginal_s_per_sample': [(y[k + 1] - y[k]) / (x[k + 1] - x[k])
                                      for k in range(n - 1)]}


def vmr_cost(sampler, record: list[tuple[str, float]], generate: list[float]) -> dict:
    """VMR's completion cost (part of ``score``) in the timed prefix-phase iterations, against
    the base rollout (``generate``) of the same iterations."""
    phases = [p for p, _ in record]
    pre = [k for k, p in enumerate(phases) if p == 'prefix']
    out: dict[str, Any] = {'split_step': sampler.split_step, 'phases': phases,
                           'completion_s': None, 'generate_s': None,
                           'completion_over_generate': None}
    if pre:
        comp, gen = [record[k][1] for k in pre], [generate[k] for k in pre]
        out.update(completion_s=stats(comp), generate_s=stats(gen),
                   completion_over_generate=statistics.median(comp) / statistics.median(gen))
    return out


def plain_logp_entropy(logits, actions, *, cfg_scale: float, temperature: float, top_k: int,
                       top_p: float):
    """The textbook composition :func:`bench_logp_memory` compares against: the same
    distribution as ``categorical_logp_entropy`` (``cfg_mix`` / temperature, truncation as a
    ``-inf`` fill, ``log_softmax``, ``H = -sum p log p`` over the kept tokens), unchunked."""
    import torch

    from vargo.components.modules.categorical import cfg_mix, truncation_keep_mask
    z = cfg_mix(logits[0], logits[1] if logits.shape[0] == 2 else None, cfg_scale) / temperature
    keep = truncation_keep_mask(z.detach(), top_k, top_p) if top_k > 0 or top_p < 1 else None
    if keep is not None:
        keep = keep.scatter(1, actions[:, None], True)
        z = z.masked_fill(~keep, float('-inf'))
    logp_all = torch.log_softmax(z, dim=-1)
    p = logp_all.exp()
    plogp = p * (logp_all if keep is None else logp_all.masked_fill(~keep, 0.0))
    return logp_all.gather(1, actions[:, None])[:, 0], -plogp.sum(-1)


#: glibc mallopt parameter number of the mmap threshold (malloc.h)
M_MMAP_THRESHOLD = -3


def _mmap_every_large_allocation() -> bool:
    """Make glibc serve every allocation of 64 KiB or more by its own mmap (returned to the
    system on free), so the resident high-water mark counts only the tensors alive at the peak:
    with its default dynamic threshold, freed blocks below 32 MB stay in the heap and the peak
    depends on what ran before. True if set (Linux glibc); the setting stays for the process."""
    import ctypes
    import ctypes.util
    try:
        libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
        return bool(libc.mallopt(M_MMAP_THRESHOLD, 64 * 1024))
    except (OSError, AttributeError):
        return False


def bench_logp_memory(rows: int, vocab: int, spec, mem: PeakMemory, seed: int) -> dict:
    """Peak memory of the log-prob + entropy forward/backward (the module doc, item 8)."""
    import torch

    from vargo.components.modules.categorical import categorical_logp_entropy, cfg_mix
    g = 2 if spec.uses_cfg else 1
    truncate = spec.mode == 'rollout'
    kw = dict(cfg_scale=spec.cfg_scale if g == 2 else 1.0, temperature=spec.temperature,
              top_k=spec.top_k if truncate else 0, top_p=spec.top_p if truncate else 1.0)
    unit = rows * vocab * 4 / 2 ** 20
    gen = torch.Generator().manual_seed(seed)
    out = {'rows': rows, 'vocab': vocab, 'logit_groups': g, **kw, 'unit_mb': unit,
           'exact_release': _mmap_every_large_allocation()}
    for name, fn in (('vargo', lambda lg, a: categorical_logp_entropy(lg, a, **kw)),
                     ('plain', lambda lg, a: plain_logp_entropy(lg, a, **kw))):
        logits = torch.randn(g, rows, vocab, generator=gen).mul_(3).requires_grad_(True)
        with torch.no_grad():   # taken tokens inside any truncated set, as a sampler's are
            actions = cfg_mix(logits[0], logits[1] if g == 2 else None,
                              kw['cfg_scale']).argmax(-1)

        def step():
            logits.grad = None
            with torch.enable_grad():
                logp, ent = fn(logits, actions)
                (-logp.mean() - ENTROPY_COEF * ent.mean()).backward()

        step()          # warm-up: the allocator's first-call growth is not the method's
        logits.grad = None
        mem.start()
        step()
        m = mem.stop()
        out[name] = {**m, 'peak_above_start_units': m['peak_above_start_mb'] / unit}
        del logits, actions
    return out


def bench_reward_heads(cfg, model, cond, args, mem: PeakMemory) -> dict:
    """Startup and per-image cost of every reward head (see the module doc, item 7)."""
    import dataclasses

    import torch
    from mmengine.registry import DefaultScope

    from vargo.core.registry import REWARD_HEADS, checked_build

    heads = {name: ('reward', c) for name, c in (cfg.model.get('rewards') or {}).items()}
    metric = (cfg.get('eval_cfg') or {}).get('metric_heads') or {}
    heads.update({name: ('metric', c) for name, c in metric.items()})
    with torch.no_grad():
        rollout = model.generate(cond, model.iteration_context(0, seed=args.seed,
                                                               num_conditions=len(cond)))
        if rollout.images is None:
            rollout = dataclasses.replace(rollout, images=model.policy.decode(rollout))
    ctx = model.reward_context(0)
    b = rollout.batch_size
    out = {}
    for name, (kind, head_cfg) in heads.items():
        head_cfg = head_cfg.to_dict() if hasattr(head_cfg, 'to_dict') else dict(head_cfg)
        mem.start()
        t0 = time.perf_counter()
        with DefaultScope.overwrite_default_scope('vargo'):
            head = checked_build(head_cfg, REWARD_HEADS)
        startup = time.perf_counter() - t0
        build_mem = mem.stop()
        mem.start()
        times, scored = timed(lambda h=head: h(rollout, ctx), args.repeat)
        t = stats(times)
        out[name] = {'kind': kind, 'type': type(head).__name__, 'startup_s': startup,
                     'startup_peak_above_start_mb': build_mem['peak_above_start_mb'],
                     'samples': b, 'image_size': list(rollout.images.shape[-2:]), 'time_s': t,
                     'ms_per_image': {'median': 1000 * t['median'] / b,
                                      'min': 1000 * t['min'] / b},
                     'finite_scores': int(torch.isfinite(scored.scores).sum()),
                     'metrics': {k: float(v) for k, v in scored.metrics.items()},
                     **mem.stop()}
        del head
    return out


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------

def _fmt(x) -> str:
    if x is None:
        return '-'
    if isinstance(x, str):
        return x
    ax = abs(x)
    if ax >= 1000:
        return f'{x:,.0f}'
    if ax >= 100:
        return f'{x:.1f}'
    if ax >= 1:
        return f'{x:.2f}'
    return f'{x:.4f}'


def table(res: dict) -> str:
    """The fixed-width table printed by the tool."""
    rows: list[tuple[str, Any, Any, str]] = []
    m = res['machine']
    g = m['gemm']
    rows.append((f'fp32 GEMM {g["size"]}^3, before the workloads', g['gflops']['median'],
                 g['gflops']['best'], 'GFLOP/s'))
    if 'gemm_end' in m:
        rows.append((f'fp32 GEMM {g["size"]}^3, after them', m['gemm_end']['gflops']['median'],
                     m['gemm_end']['gflops']['best'], 'GFLOP/s'))
        rows.append(('  GEMM peak (best of both)', None, m['gemm_peak']['gflops'], 'GFLOP/s'))
    bw = m['bandwidth']
    rows.append(('memory read (sum)', bw['read_gbps']['median'], bw['read_gbps']['best'], 'GB/s'))
    rows.append(('memory copy (read + write)', bw['copy_gbps']['median'], bw['copy_gbps']['best'],
                 'GB/s'))
    ro = res.get('rollout')
    if ro:
        for key in ('no_cfg', 'cfg'):
            if key not in ro:        # --config-scale-only
                continue
            r = ro[key]
            what = f'rollout, CFG {r["cfg_scale"]:g}' if key == 'cfg' else 'rollout, no CFG'
            shape = f'{r["samples"]} x {r["steps_timed"]}'
            if r.get('tokens_timed', r['steps_timed']) != r['steps_timed']:   # VAR: scales
                shape = f'{r["samples"]} x {r["tokens_timed"]} tokens in {r["steps_timed"]} steps'
            if r['mode'] == 'continuation':
                shape += f' after {r["prefill_actions"]}'
                if 'actions_per_token' in r:
                    given = r['prefill_actions'] // r['actions_per_token']
                    shape += f' transitions ({given} tokens)'
            rows.append((f'{what} ({shape})', r['tokens_per_s']['median'],
                         r['tokens_per_s']['best'], 'tokens/s'))
            if 'head_transitions_per_s' in r:
                rows.append((f'  head transitions ({r["actions_per_token"]} per token)',
                             r['head_transitions_per_s']['median'],
                             r['head_transitions_per_s']['best'], 'transitions/s'))
            rows.append(('  per decode step', r['ms_per_step']['median'], r['ms_per_step']['min'],
                         'ms'))
            rows.append(('  peak memory', r['peak_rss_mb'], None, 'MB'))
        rows.append(('  weights read once per step', ro['weight_read_ms_per_step']['median'],
                     ro['weight_read_ms_per_step']['min'], 'ms'))
    up = res.get('update')
    if up:
        cfg_note = f', CFG {up["spec"]["cfg_scale"]:g} doubled' if up['spec']['uses_cfg'] else ''
        shape = f'{up["samples"]} x {up["actions"]}'
        if 'head_transitions_per_s' in up:
            shape = f'{up["samples"]} x {up["tokens"]} tokens, {up["actions"]} transitions'
        rows.append((f'update fwd+bwd ({shape}{cfg_note})',
                     up['tokens_per_s']['median'], up['tokens_per_s']['best'], 'tokens/s'))
        if 'head_transitions_per_s' in up:
            rows.append(('  head transitions', up['head_transitions_per_s']['median'],
                         up['head_transitions_per_s']['best'], 'transitions/s'))
        rows.append(('  forward + backward', up['time_s']['median'], up['time_s']['min'], 's'))
        rows.append(('  forward', up['forward_s']['median'], up['forward_s']['min'], 's'))
        rows.append(('  backward', up['backward_s']['median'], up['backward_s']['min'], 's'))
        if up['gflops']:
            rows.append(('  achieved (3 x forward FLOPs)', up['gflops']['median'],
                         up['gflops']['best'], 'GFLOP/s'))
            if up['pct_of_gemm_peak']:
                rows.append(('  of the GEMM peak', up['pct_of_gemm_peak']['median'],
                             up['pct_of_gemm_peak']['best'], '%'))
        rows.append(('  peak memory', up['peak_rss_mb'], None, 'MB'))
    lk = res.get('linear_kernels')
    if lk:
        rows.append((f'update, F.linear ({lk["layers"]} layers, {lk["rounds"]} rounds)',
                     lk['plain_s']['median'], lk['plain_s']['min'], 's'))
        rows.append(('update, oneDNN training linears', lk['onednn_s']['median'],
                     lk['onednn_s']['min'], 's'))
        r = lk['ratio_plain_over_onednn']
        rows.append((f'  ratio F.linear / oneDNN (range {r["min"]:.3f}-{r["max"]:.3f})',
                     r['median'], None, 'x'))
        rows.append(('  largest gradient difference / largest gradient',
                     f'{lk["grad_difference_relative_to_largest"]:.1e}', None, ''))
        rows.append(('  largest per-tensor relative difference',
                     f'{lk["max_relative_grad_difference"]:.1e}', None,
                     f'in {lk["max_relative_grad_tensor"]}'))
        if lk.get('nonfinite_grad_elements'):
            rows.append(('  gradient elements NaN or infinite', lk['nonfinite_grad_elements'],
                         None, ''))
    lm = res.get('logp_memory')
    if lm:
        shape = f'{lm["logit_groups"]} x {lm["rows"]} x {lm["vocab"]}'
        rows.append((f'log-prob + entropy fwd+bwd ({shape} logits), peak above start', None,
                     None, f'x one [{lm["rows"]}, {lm["vocab"]}] fp32 = {lm["unit_mb"]:.1f} MB'))
        for name in ('vargo', 'plain'):
            rows.append((f'  {name}', lm[name]['peak_above_start_units'], None, 'x'))
    it = res.get('iteration')
    if it:
        rows.append((f'iteration ({it["samples"]} samples, G={it["group_size"]})',
                     it['total_s']['median'], it['total_s']['min'], 's'))
        for p in ('generate', 'score', 'advantages', 'reference', 'train_step'):
            rows.append((f'  {p} ({100 * it["fraction"][p]:.1f}%)', it[f'{p}_s']['median'],
                         it[f'{p}_s']['min'], 's'))
        rows.append(('  image decoding (part of generate)', it['decode_images_s']['median'],
                     it['decode_images_s']['min'], 's'))
        v = it.get('vmr')
        if v and v['completion_s']:
            rows.append(('  VMR completions (prefix phase, part of score)',
                         v['completion_s']['median'], v['completion_s']['min'], 's'))
            rows.append(('  VMR completions / generate', v['completion_over_generate'], None,
                         'x'))
        mt = it.get('mte')
        if mt:
            rows.append((f'  MTE: {mt["chains"]} extra chains (part of generate)',
                         mt['extra_chains_s']['median'], mt['extra_chains_s']['min'], 's'))
            rows.append(('  MTE extra chains / iteration', mt['extra_chains_over_iteration'],
                         None, 'x'))
        rows.append(('  peak memory', it['peak_rss_mb'], None, 'MB'))
    for phase, prof in (res.get('op_profile') or {}).items():
        pr = prof['products']
        pct = pr['pct_of_gemm_peak']
        rows.append((f'{phase} by operator: matrix products {100 * (pr["share"] or 0):.0f}% '
                     f'of {prof["total_ms"] / 1000:.2f} s', pr['gflops'], None,
                     'GFLOP/s' + (f' ({pct:.0f}% of the GEMM peak)' if pct else '')))
        for name, row in sorted(pr['by_op'].items(), key=lambda kv: -kv[1]['ms'])[:4]:
            rows.append((f'  {name} x{row["calls"]} ({100 * row["share"]:.0f}%)', row['gflops'],
                         None, 'GFLOP/s'))
        for name, row in (pr.get('by_rows') or {}).items():
            rows.append((f'  {name} x{row["calls"]} ({100 * row["share"]:.0f}%, '
                         f'{row["gflop"]:.1f} GFLOP)', row['gflops'], None, 'GFLOP/s'))
        for name, row in list((pr.get('by_conv_shape') or {}).items())[:6]:
            rows.append((f'  conv {name} x{row["calls"]} ({100 * row["share"]:.0f}%)',
                         row['gflops'], None, 'GFLOP/s'))
        for name, row in list((pr.get('by_linear_shape') or {}).items())[:8]:
            rows.append((f'  linear {name} x{row["calls"]} ({100 * row["share"]:.0f}%)',
                         row['gflops'], None, 'GFLOP/s'))
    gs = res.get('group_sizes')
    if gs:
        fit = gs['fit']
        rows.append((f'iteration by group size ({gs["conditions"]} conditions)', None, None, ''))
        for row in gs['sizes']:
            rows.append((f'  G={row["group_size"]} ({row["samples"]} samples)',
                         row['seconds']['median'], row['seconds']['min'], 's'))
        rows.append(('  fit: fixed', fit['fixed_s'], None, 's'))
        rows.append(('  fit: per sample', fit['per_sample_s'], None, 's'))
        rows.append(('  fit: R^2 / largest relative residual',
                     fit['r2'], fit['max_relative_residual'], ''))
    for name, h in (res.get('reward_heads') or {}).items():
        rows.append((f'{h["kind"]} head {name} ({h["type"]}): startup', h['startup_s'], None,
                     's'))
        rows.append((f'  per image (batch {h["samples"]})', h['ms_per_image']['median'],
                     h['ms_per_image']['min'], 'ms'))
    width = max(len(r[0]) for r in rows) + 2
    head = (f'{res["config"]}  arch={res["arch"]}  batch={res["batch"]}  threads={res["threads"]}'
            f'  torch {res["torch"]}\n{res["cpu"]}; load average {res["load_average_start"]} at '
            f'start, {res["load_average_end"]} at end; memory: {res["memory_method"]}; heap '
            f'{(res.get("heap") or {}).get("setting", "?")}, OMP_WAIT_POLICY '
            f'{res.get("omp_wait_policy", "?")}\n')
    lines = [f'{"measurement":<{width}}{"median":>14}{"best":>14}  unit', '-' * (width + 36)]
    for name, med, best, unit in rows:
        lines.append(f'{name:<{width}}{_fmt(med):>14}{_fmt(best):>14}  {unit}')
    lines += [f'WARNING: {w}' for w in res.get('warnings', [])]
    return head + '\n'.join(lines)


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return repr(x)


def run(args) -> dict:
    """All measurements; returns the result dict (also written to ``args.out``)."""
    import torch

    from vargo.core.cli import apply_heap_setting
    heap = apply_heap_setting()   # README "Heap"; VARGO_HEAP=glibc measures glibc's defaults
    torch.set_num_threads(args.threads)
    mem = PeakMemory()
    res: dict[str, Any] = {
        'config': args.config, 'cfg_options': _jsonable(args.cfg_options or {}),
        'batch': args.batch, 'threads': torch.get_num_threads(), 'repeat': args.repeat,
        'steps': args.steps, 'seed': args.seed, 'torch': torch.__version__,
        'python': platform.python_version(), 'cpu': cpu_model(), 'cpu_count': os.cpu_count(),
        'memory_method': mem.method, 'load_average_start': load_average(), 'heap': heap,
        **run_provenance(),
    }
    torch.manual_seed(args.seed)
    mem.start()
    cfg, model, group_size, n_cond = build(args)      # first: a config error fails at once
    res['build'] = mem.stop()
    res['machine'] = {'gemm': bench_gemm(args.gemm_size, args.repeat),
                      'bandwidth': bench_bandwidth(args.bandwidth_mb, args.repeat)}
    policy = model.policy
    res['arch'] = _jsonable(cfg.model.policy.get('arch'))
    res['policy_cfg'] = _jsonable(cfg.model.policy.to_dict())
    res['sampler_cfg'] = _jsonable(cfg.model.sampler.to_dict())
    res['group_size'] = group_size
    res['trainable_params'] = sum(p.numel() for p in policy.trainable_parameters())
    cond = conditions(cfg, n_cond)
    with torch.no_grad():
        enc = policy.encode_conditions(cond)

    config_sampler = sampler_variant(cfg, decode_images=False)
    res['num_actions'], _, per_token = action_sizes(policy, config_sampler)
    rollout = None
    if not args.skip_rollout:
        config_scale = config_sampler.logprob_spec().cfg_scale
        res['rollout'] = {'config_scale': config_scale}
        settings = (('no_cfg', 1.0), ('cfg', config_scale if config_scale != 1 else 4.0))
        if args.config_scale_only:
            settings = [(k, s) for k, s in settings if s == config_scale]
        for key, scale in settings:
            sampler = sampler_variant(cfg, decode_images=False, cfg_scale=scale)
            res['rollout'][key], r = bench_rollout(policy, sampler, enc, group_size, args, mem)
            if scale == config_scale:
                rollout = r
            del sampler
        wb = weight_bytes(policy)
        read = res['machine']['bandwidth']['read_gbps']
        res['rollout']['weight_bytes'] = wb
        res['rollout']['weight_read_ms_per_step'] = {
            'median': 1000 * wb / (read['median'] * 1e9), 'min': 1000 * wb / (read['best'] * 1e9)}
    if not args.skip_update:
        if rollout is None:
            with torch.no_grad():
                rollout = config_sampler.rollout(policy, enc, group_size=group_size)
        res['update'] = bench_update(policy, rollout, config_sampler.logprob_spec(), args, mem,
                                     per_token)
    if args.linear_kernels_ab:
        if rollout is None:
            with torch.no_grad():
                rollout = config_sampler.rollout(policy, enc, group_size=group_size)
        res['linear_kernels'] = bench_linear_kernels(policy, rollout,
                                                     config_sampler.logprob_spec(),
                                                     args.linear_kernels_ab)
    if args.op_profile:
        res['op_profile'] = profile_phases(policy, config_sampler, enc, group_size, rollout)
    del rollout
    if not args.skip_iteration:
        res['iteration'] = bench_iteration(cfg, model, cond, args, mem)
    if args.reward_heads:
        res['reward_heads'] = bench_reward_heads(cfg, model, cond, args, mem)
    if args.group_sizes:
        res['group_sizes'] = bench_group_sizes(cfg, model, cond, args)
    res['machine']['gemm_end'] = bench_gemm(args.gemm_size, args.repeat)
    res['machine']['gemm_peak'] = gemm_peak([res['machine']['gemm'], res['machine']['gemm_end']])
    if args.logp_memory:     # last: it changes the allocator's mmap threshold
        res['logp_memory'] = bench_logp_memory(*args.logp_memory, config_sampler.logprob_spec(),
                                               mem, args.seed)
    res['warnings'] = fraction_of_peak(res)
    bad = (res.get('linear_kernels') or {}).get('nonfinite_grad_elements')
    if bad:
        res['warnings'].append(f'{bad} gradient elements of the linear-kernel A/B are NaN or '
                               f'infinite (the random weights\' loss overflows); the gradient '
                               f'difference covers the finite ones only')
    res['load_average_end'] = load_average()
    return res


def write_result(res: dict, path: str) -> None:
    """The result JSON, written atomically (an interrupted write leaves the old file)."""
    from vargo.core.checkpoint import atomic_write_bytes
    atomic_write_bytes(json.dumps(res, indent=1).encode(), path)


def main(argv=None) -> int:
    args = parse_args(argv)
    from vargo.core.registry import ConfigError
    try:
        res = run(args)
    except (ConfigError, FileNotFoundError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    res = _jsonable(res)
    print(table(res))
    write_result(res, args.out)
    print(f'wrote {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
