"""Side-by-side sampling speed of vargo and the official code, on the same weights.

    python tools/bench_official.py --family llamagen --official DIR [--arch GPT-B] [--batch 8]
                                   [--cfg 4] [--steps 256] [--rounds 3] [--threads 1] [--out F]
    python tools/bench_official.py --family var --official DIR --arch d16 --batch 2 [--cfg 2.5]
    python tools/bench_official.py --family mar --official DIR --arch MAR-B --batch 2
                                   [--steps 64] [--head-steps 100] [--cfg 2.9]
    python tools/bench_official.py --family {llamagen,var,mar} --official DIR --decoder
                                   [--batch 2] [--vae JSON]

``DIR`` is a local checkout of the official repository (LlamaGen: FoundationVision/LlamaGen, VAR:
FoundationVision/VAR, MAR: LTH14/mar); its modules are imported from there (``DIR`` first on
``sys.path``) and nothing is downloaded. A directory without the expected file is refused with
one line naming it.

What runs:

1. the official model (``GPT_models`` / ``Transformer`` of ``autoregressive/models/gpt.py``;
   ``VQVAE`` + ``VAR`` of ``models/`` with ``build_vae_var``'s arguments; ``mar_base`` ... or
   ``MAR`` of ``models/mar.py``) with the official init under ``--seed``, then N(0, ``--perturb``)
   added to every parameter (the official inits zero some output layers, which would make every
   token uniform and the agreement check blind), in eval mode;
2. vargo's policy of the same size, loaded *strictly* from that model's state dict (the family's
   loader rules: official key names; LlamaGen's derived tensors dropped);
3. the official loop (LlamaGen ``generate()``, ``VAR.autoregressive_infer_cfg``,
   ``MAR.sample_tokens``) and vargo's registered sampler (``ARSampler``, ``NextScaleSampler``,
   ``MaskedSampler``, called as tools/benchmark.py calls them: ``sampler.rollout(policy,
   encoded conditions, group_size=1)``, images not decoded) on identical settings. vargo runs
   with ``rng=None``, i.e. the official draws on torch's (MAR: and numpy's) global generators,
   and both sides are reseeded with ``--seed`` before every run, so every run samples the same;
4. ``--warmup`` untimed runs of each, then ``--rounds`` interleaved rounds (official, vargo,
   official, vargo, ...); the per-round ratio official time / vargo time is reported as median
   and range, with each side's seconds per run and ms per decode step (LlamaGen: a token, VAR: a
   scale, MAR: an AR step);
5. agreement, checked on *every* run (warm-up and timed): LlamaGen and VAR tokens identical
   (VAR's official tokens are read by a forward hook on the quantiser's embedding, which is
   called with each scale's ids), MAR final latents within ``--atol`` (max |diff|). Any
   disagreement ends the tool with exit code 1 and one line: no ratio is reported;
6. same-run machine limits (tools/benchmark.py's helpers): fp32 GEMM peak (best of a probe
   before and one after the rounds), read / copy memory bandwidth, and for the raster decode
   (LlamaGen) the two floors of a step: weight-read (vargo's trainable weight bytes, embedding
   tables excluded, / the read bandwidth) and compute (2 FLOP per weight and row, CFG rows
   included, / the GEMM peak); with batch 8 and CFG a step does 8 FLOP per weight byte, so on a
   CPU the compute floor is usually the higher one. Both are printed next to both sides' ms
   per step, with a third, the memory floor: the weights plus the KV cache a step reads on
   average (every layer's keys and values of the positions it attends to, from the policy's
   own decoding cache) over the read bandwidth;
7. for the raster decode, vargo's linear layers alone: one pass over every ``nn.Linear`` of
   ``policy.decoding_modules()`` at the step's rows through the sampler's own kernels (its
   packed copies, else ``F.linear``), best of 5, and the rate it streams the weights at. A
   step's products cannot run faster than this pass, so step time minus this pass is what
   attention, norms and sampling cost, and this pass against the weight-read floor is what
   the sampler's kernel loses to the raw read bandwidth.

Shims (only what the official code needs on a CPU-only machine, applied while it runs):
``torch.Tensor.cuda`` returns the tensor itself when CUDA is absent (MAR calls ``.cuda()``);
``scipy.stats`` is replaced by a stub when scipy is not installed (MAR's constructor builds a
``truncnorm`` used only in training; calling it raises). VAR: the official ``build_vae_var`` is
not called (it disables ``reset_parameters`` of torch layers process-wide); the same
constructors are called with its arguments. With ``--decode`` (VAR only) both sides decode images
(the official function always returns images: without it its VQVAE decode is skipped by
handing it a proxy that returns the last ``f_hat``).

With ``--decoder`` the image decoders are compared instead of the samplers: the official
LlamaGen ``VQ_models['VQ-16']`` (``tokenizer/tokenizer_image/vq_model.py``, ``decode_code``), VAR
``VQVAE`` (``models/vqvae.py``, ``idxBl_to_img(same_shape=True, last_one=True)``: the residual sum
of the scales and the decoder) and MAR ``AutoencoderKL(embed_dim=16, ch_mult=(1, 1, 2, 2, 4))``
(``models/vae.py``, ``decode``) against vargo's ``VQModel``, ``MultiScaleVQVAE`` and ``KLVAE``
loaded strictly from them, on the same seeded random codes (VQ) or latents (KL); the images
must agree within ``--atol`` (the convolutions run channels-last in vargo, so the summation
order, not the maths, may differ). ``--vae`` gives vargo's tokenizer arguments when the official
constructor is not the default one (a JSON dict; default: the official configuration).

Output: a Markdown table on stdout and ``--out`` (JSON) with every number, the settings, the
commits of vargo and of the official checkout, the heap setting, the OpenMP wait policy, the
torch version, CPU, threads and the load average at start and end (the machine may be shared:
absolute times move with the load, the interleaved ratio much less).
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import json
import math
import os
import platform
import re
import sys
import types
from typing import Any, Callable, Optional, Sequence

os.environ.setdefault('HF_HUB_OFFLINE', '1')


def _benchmark_helpers():
    """tools/benchmark.py (its timing, statistics and machine-limit helpers)."""
    name = 'vargo_tools_benchmark'
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, os.path.join(os.path.dirname(os.path.abspath(__file__)), 'benchmark.py'))
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


FAMILIES = ('llamagen', 'var', 'mar')
#: per family: the file a checkout must hold, the repository, the top-level module names it
#: brings (purged from ``sys.modules`` when they come from elsewhere) and the defaults
CHECKOUTS = {
    'llamagen': ('autoregressive/models/gpt.py', 'FoundationVision/LlamaGen',
                 ('autoregressive', 'utils', 'tokenizer')),
    'var': ('models/var.py', 'FoundationVision/VAR', ('models', 'utils', 'dist')),
    'mar': ('models/mar.py', 'LTH14/mar', ('models', 'diffusion', 'util')),
}
DEFAULTS = {
    'llamagen': dict(arch='GPT-B', batch=8, cfg=4.0, steps=256, vocab=16384),
    'var': dict(arch='d16', batch=2, cfg=2.5, steps=None, vocab=4096),
    'mar': dict(arch='mar_base', batch=2, cfg=2.9, steps=64, vocab=None),
}
#: per family with ``--decoder``: the file of the official image decoder
DECODER_FILES = {'llamagen': 'tokenizer/tokenizer_image/vq_model.py', 'var': 'models/vqvae.py',
                 'mar': 'models/vae.py'}
MAR_ALIASES = {'MAR-B': 'mar_base', 'MAR-L': 'mar_large', 'MAR-H': 'mar_huge'}


class OutputsDisagree(Exception):
    """The two implementations sampled different outputs: no ratio may be reported."""


def parse_args(argv=None):
    from vargo.core.cli import ArgumentParser, cfg_scale, int_at_least, positive_int
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--family', required=True, choices=FAMILIES)
    p.add_argument('--official', required=True, metavar='DIR',
                   help='local checkout of the official repository')
    p.add_argument('--arch', help='LlamaGen: GPT-B ... or a JSON dict of dim/n_layer/n_head; '
                                  'VAR: dN (d16, VAR-d16; width 64 N, N heads); MAR: mar_base / '
                                  'MAR-B ... or a JSON dict of embed_dim/depth/num_heads/'
                                  'diffloss_d/diffloss_w')
    p.add_argument('--batch', type=positive_int, help='images per run (8 / 2 / 2)')
    p.add_argument('--cfg', type=cfg_scale,
                   help="guidance in vargo's convention, 1 = none (LlamaGen 4, VAR 2.5 = the "
                        "official cfg=1.5, MAR 2.9 with the linear schedule)")
    p.add_argument('--steps', type=positive_int,
                   help='LlamaGen: tokens per image, a square (256 = 256 px with VQ-16); MAR: '
                        'AR steps num_iter (64); VAR: use --patch-nums')
    p.add_argument('--head-steps', type=int_at_least(2), default=100,
                   help='MAR: diffusion head steps num_sampling_steps (official 100)')
    p.add_argument('--image-size', type=positive_int, default=256, help='MAR: image side')
    p.add_argument('--patch-nums', type=positive_int, nargs='+',
                   default=[1, 2, 3, 4, 5, 6, 8, 10, 13, 16], help='VAR: the scales')
    p.add_argument('--vae-ch', type=positive_int, default=160, help='VAR: VQVAE width (160)')
    p.add_argument('--buffer-size', type=positive_int, default=64, help='MAR: class slots (64)')
    p.add_argument('--vocab', type=positive_int, help='LlamaGen / VAR codebook (16384 / 4096)')
    p.add_argument('--num-classes', type=positive_int, default=1000)
    p.add_argument('--top-k', type=int_at_least(0), default=0, help='0 = off (not MAR)')
    p.add_argument('--top-p', type=float, default=1.0, help='1 = off (not MAR)')
    p.add_argument('--temperature', type=float, default=1.0, help='(LlamaGen, MAR)')
    p.add_argument('--decode', action='store_true', help='VAR: both sides decode images')
    p.add_argument('--decoder', action='store_true',
                   help='compare the image decoders instead of the samplers (LlamaGen VQ-16, '
                        'VAR multi-scale VQVAE, MAR KL-16) on the same random codes / latents')
    p.add_argument('--vae', help='with --decoder: vargo tokenizer arguments as a JSON dict '
                                 '(default: the official configuration)')
    p.add_argument('--threads', type=positive_int, default=1, help='torch.set_num_threads')
    p.add_argument('--rounds', type=positive_int, default=3, help='timed interleaved rounds')
    p.add_argument('--warmup', type=int_at_least(0), default=1, help='untimed runs of each')
    p.add_argument('--seed', type=int, default=0, help='weights and sampling noise')
    p.add_argument('--perturb', type=float, default=0.02,
                   help='std of the noise added to every official parameter after its init')
    p.add_argument('--atol', type=float, default=1e-3,
                   help='MAR: max |diff| of the latents; --decoder: of the images')
    p.add_argument('--plain-too', action='store_true',
                   help='run vargo with packed_weights=True and also time it with '
                        'packed_weights=False (plain F.linear) as a third interleaved side '
                        '(without it vargo runs with its sampler\'s default)')
    p.add_argument('--gemm-size', type=positive_int, default=2048)
    p.add_argument('--bandwidth-mb', type=positive_int, default=512)
    p.add_argument('--out', default='bench_official.json', help='JSON file of all numbers')
    args = p.parse_args(argv)
    for key, value in DEFAULTS[args.family].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    fam = args.family
    if args.decoder:
        bad = [flag for flag, on in (('--decode', args.decode), ('--plain-too', args.plain_too),
                                     ('--top-k', args.top_k), ('--top-p', args.top_p != 1.0))
               if on]
        if bad:
            p.error(f'{bad[0]} is a sampling option; --decoder times the image decoders only')
    elif args.vae is not None:
        p.error('--vae sets the tokenizer of --decoder; add --decoder or drop --vae')
    if not 0 < args.top_p <= 1:
        p.error(f'--top-p={args.top_p} must be in (0, 1] (1 = off)')
    if not args.temperature > 0:
        p.error(f'--temperature={args.temperature} must be > 0')
    if fam == 'var' and args.steps is not None:
        p.error('--steps: VAR takes one step per scale; set the scales with --patch-nums')
    if fam == 'var' and args.temperature != 1.0:
        p.error('--temperature: the official VAR sampler has none; leave it at 1')
    if fam == 'mar' and (args.top_k or args.top_p != 1.0):
        p.error('--top-k / --top-p: MAR samples continuous tokens; leave them off')
    if fam != 'var' and args.decode:
        p.error('--decode is a VAR option (the LlamaGen and MAR loops return tokens)')
    if fam == 'llamagen':
        if math.isqrt(args.steps) ** 2 != args.steps:
            p.error(f'--steps={args.steps} must be a square number of tokens (256 = 16 x 16)')
        if args.cfg < 1:
            p.error(f'--cfg={args.cfg} must be >= 1: the official generate() guides only above 1')
    if fam == 'var' and args.cfg < 1:
        p.error(f'--cfg={args.cfg} must be >= 1 (1 = the official cfg=0)')
    if fam == 'var' and args.vae_ch % 32:
        p.error(f'--vae-ch={args.vae_ch} must be a multiple of 32 (the VQVAE GroupNorm groups)')
    if fam == 'mar' and args.image_size % 16:
        p.error(f'--image-size={args.image_size} must be a multiple of 16 (KL-16 tokens)')
    return args


# ---------------------------------------------------------------------------------------------
# the official checkout
# ---------------------------------------------------------------------------------------------

class UsageError(ValueError):
    """A bad command line or checkout: one line, exit code 2."""


def check_checkout(family: str, root: str, rel: Optional[str] = None) -> str:
    """The absolute checkout directory, or :class:`UsageError` naming the expected file
    (``rel``, default the family's sampler file)."""
    default, repo, _ = CHECKOUTS[family]
    rel = rel or default
    root = os.path.abspath(os.path.expanduser(root))
    if not os.path.isfile(os.path.join(root, rel)):
        raise UsageError(f'--official {root}: not a {repo} checkout (no {rel}); pass the '
                         f'directory of a local clone of https://github.com/{repo}')
    return root


def _stub_scipy() -> None:
    """Install a ``scipy.stats`` stub when scipy is missing (MAR builds a training-only
    ``truncnorm``)."""
    try:
        import scipy.stats  # noqa: F401
        return
    except ImportError:
        pass

    class _TruncNorm:
        def __init__(self, *a, **kw):
            pass

        def rvs(self, *a, **kw):
            raise RuntimeError('scipy is not installed: bench_official.py stubs scipy.stats, '
                               'which only MAR training uses')

    scipy = types.ModuleType('scipy')
    stats = types.ModuleType('scipy.stats')
    stats.truncnorm = _TruncNorm
    scipy.stats = stats
    sys.modules.setdefault('scipy', scipy)
    sys.modules.setdefault('scipy.stats', stats)


#: the checkout directories this process put on ``sys.path``
_INSERTED: list[str] = []


def import_official(family: str, root: str, modules: tuple[str, ...]) -> list:
    """Import ``modules`` (dotted names) of the checkout at ``root``; module names the checkout
    brings that were imported from elsewhere are forgotten first."""
    tops = CHECKOUTS[family][2]

    def elsewhere(mod) -> bool:
        try:
            places = [getattr(mod, '__file__', None)] + list(getattr(mod, '__path__', []) or [])
        except (KeyError, AttributeError):
            return True
        return not any(os.path.abspath(x).startswith(root + os.sep) for x in places if x)

    stale = [n for n in list(sys.modules) if n.split('.')[0] in tops and elsewhere(sys.modules[n])]
    for name in stale:                   # decided first: a namespace path reads its parent
        del sys.modules[name]
    for old in _INSERTED:                        # an earlier checkout of this process
        while old in sys.path:
            sys.path.remove(old)
    _INSERTED[:] = [root]
    sys.path.insert(0, root)
    if family == 'mar':
        _stub_scipy()
    out = []
    for name in modules:
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name and e.name.split('.')[0] in tops:
                raise UsageError(f'--official {root}: {name} could not import {e.name!r}: '
                                 f'an incomplete {CHECKOUTS[family][1]} checkout') from e
            raise UsageError(f'the official {name} needs the module {e.name!r}, which is not '
                             f'installed (pip install it; nothing is downloaded here)') from e
        if not os.path.abspath(mod.__file__).startswith(root + os.sep):
            raise UsageError(f'{name} was imported from {mod.__file__}, not from {root}')
        out.append(mod)
    return out


@contextlib.contextmanager
def cpu_shims():
    """``Tensor.cuda`` returns the tensor itself while the official code runs on a machine
    without CUDA (MAR calls ``.cuda()`` unconditionally); FutureWarnings of the official code
    (LlamaGen's ``sdp_kernel`` context) silenced."""
    import warnings

    import torch
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', FutureWarning)     # LlamaGen's sdp_kernel context
        if torch.cuda.is_available():
            yield
            return
        original = torch.Tensor.cuda
        torch.Tensor.cuda = lambda self, *a, **kw: self
        try:
            yield
        finally:
            torch.Tensor.cuda = original


# ---------------------------------------------------------------------------------------------
# the two sides of each family
# ---------------------------------------------------------------------------------------------

def _seed(seed: int) -> None:
    import numpy as np
    import torch
    torch.manual_seed(seed)
    np.random.seed(seed)


def _perturb(model, seed: int, std: float) -> None:
    """Add N(0, std) to every floating parameter of ``model`` (a seeded generator)."""
    import torch
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            if p.is_floating_point():
                p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)


def _labels(batch: int, num_classes: int):
    import torch
    return (torch.arange(batch) * 97 + 207) % num_classes


def _json_arch(text: str, what: str) -> dict:
    try:
        arch = json.loads(text)
    except json.JSONDecodeError:
        arch = None
    if not isinstance(arch, dict):
        raise UsageError(f'--arch {text!r} is not {what}')
    return arch


class Side:
    """One implementation: ``run()`` samples (reseeded) and returns what is compared."""

    def __init__(self, name: str, run: Callable[[], Any], params: int):
        self.name, self.run, self.params = name, run, params


def build_llamagen(args, root: str) -> dict:
    """Official ``Transformer`` + ``generate()`` and vargo's ``LlamaGenPolicy`` + ``ARSampler``."""
    import torch

    from vargo.components.policies.llamagen import GPT_ARCHS, LlamaGenPolicy
    from vargo.components.policies.llamagen.loading import is_derived_key
    from vargo.components.samplers import ARSampler
    from vargo.core.checkpoint import load_state_dict_strict
    from vargo.core.types import Conditions

    gpt, gen = import_official('llamagen', root, ('autoregressive.models.gpt',
                                                  'autoregressive.models.generate'))
    t, v, nc = args.steps, args.vocab, args.num_classes
    fields = dict(vocab_size=v, block_size=t, num_classes=nc, cls_token_num=1, model_type='c2i')
    if args.arch in GPT_ARCHS:
        if args.arch not in gpt.GPT_models:
            raise UsageError(f'--arch {args.arch}: not in the official GPT_models')
        arch = dict(GPT_ARCHS[args.arch])
        make = lambda: gpt.GPT_models[args.arch](**fields)  # noqa: E731
    else:
        arch = _json_arch(args.arch, f'one of {", ".join(GPT_ARCHS)} or a JSON dict such as '
                                     '{"dim": 64, "n_layer": 2, "n_head": 4}')
        make = lambda: gpt.Transformer(gpt.ModelArgs(**arch, **fields))  # noqa: E731
    torch.manual_seed(args.seed)
    official = make().eval()
    _perturb(official, args.seed, args.perturb)
    grid = math.isqrt(t)
    vq = dict(ch=16, ch_mult=(1, 1, 1, 1, 2), z_channels=16, codebook_size=v,
              codebook_embed_dim=8, norm_groups=4)       # never used: images are not decoded
    policy = LlamaGenPolicy(arch=arch, task='c2i', image_size=16 * grid, downsample=16,
                            num_classes=nc, vocab_size=v, tokenizer=vq)
    load_state_dict_strict(policy.gpt, official.state_dict(), source='the official model',
                           drop=is_derived_key)
    policy.eval()
    def make_sampler(packed: Optional[bool]):
        return ARSampler(cfg_scale=args.cfg, temperature=args.temperature, top_k=args.top_k,
                         top_p=args.top_p, logprob_cfg='none', decode_images=False,
                         **_packing(packed))
    sampler = make_sampler(True if args.plain_too else None)
    plain = make_sampler(False) if args.plain_too else None
    labels = _labels(args.batch, nc)
    cond = policy.encode_conditions(Conditions(class_ids=labels))

    def run_official():
        _seed(args.seed)
        with cpu_shims():
            seq = gen.generate(official, labels, t, cfg_scale=args.cfg, cfg_interval=-1,
                               temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                               sample_logits=True)
        return seq.long()

    def run_vargo():
        _seed(args.seed)
        return sampler.rollout(policy, cond, group_size=1, rng=None).actions

    def run_plain():
        _seed(args.seed)
        return plain.rollout(policy, cond, group_size=1, rng=None).actions

    extra = [Side('vargo_plain', run_plain, _count(policy.gpt))] if args.plain_too else []
    return dict(official=Side('official', run_official, _count(official)),
                vargo=Side('vargo', run_vargo, _count(policy.gpt)), extra=extra,
                packed_weights=sampler._packs.enabled,
                policy=policy, steps=t, step_unit='token', compare=_same_tokens,
                compared='sampled tokens, identical', raster=True, cond_positions=1,
                packs=sampler._packs,
                settings=dict(tokens=t, cfg_official=args.cfg, arch=arch))


class _Proxy:
    """Stands in for the official VQVAE in ``VAR.vae_proxy`` to skip the image decode."""

    def __init__(self, vae):
        self.vae = vae

    def fhat_to_img(self, f_hat):
        return f_hat

    def __getattr__(self, name):
        return getattr(self.vae, name)


def build_var(args, root: str) -> dict:
    """Official ``VQVAE`` + ``VAR.autoregressive_infer_cfg`` and vargo's ``VARPolicy`` +
    ``NextScaleSampler``."""
    import torch

    from vargo.components.policies.var import VARPolicy
    from vargo.components.policies.var.model import VAR_ARCHS
    from vargo.components.samplers import NextScaleSampler
    from vargo.core.checkpoint import load_state_dict_strict
    from vargo.core.types import Conditions

    var_mod, vqvae_mod = import_official('var', root, ('models.var', 'models.vqvae'))
    m = re.fullmatch(r'(?:VAR-)?d(\d+)', args.arch)
    if not m or int(m.group(1)) < 1:
        raise UsageError(f'--arch {args.arch!r}: a VAR depth dN (d16, VAR-d16, d2 for a tiny '
                         f'model)')
    depth = int(m.group(1))
    shared = bool(VAR_ARCHS.get(f'd{depth}', {}).get('shared_aln', False))
    pn, v, nc = tuple(args.patch_nums), args.vocab, args.num_classes
    if any(b <= a for a, b in zip(pn, pn[1:])) or len(pn) < 2:
        raise UsageError(f'--patch-nums {list(pn)}: at least two increasing scales')
    torch.manual_seed(args.seed)
    with contextlib.redirect_stdout(io.StringIO()):    # the constructor prints its config
        vae = vqvae_mod.VQVAE(vocab_size=v, z_channels=32, ch=args.vae_ch, test_mode=True,
                              share_quant_resi=4, v_patch_nums=pn)
        official = var_mod.VAR(vae_local=vae, num_classes=nc, depth=depth, embed_dim=64 * depth,
                               num_heads=depth, drop_rate=0., attn_drop_rate=0.,
                               drop_path_rate=0.1 * depth / 24, norm_eps=1e-6, shared_aln=shared,
                               cond_drop_rate=0.1, attn_l2_norm=True, patch_nums=pn,
                               flash_if_available=True, fused_if_available=True)
        official.init_weights(init_adaln=0.5, init_adaln_gamma=1e-5, init_head=0.02,
                              init_std=-1)
    official.eval()
    vae.eval()
    _perturb(official, args.seed, args.perturb)
    arch = f'd{depth}' if f'd{depth}' in VAR_ARCHS else dict(depth=depth, shared_aln=shared)
    policy = VARPolicy(arch=arch, patch_nums=pn, num_classes=nc, vocab_size=v,
                       tokenizer=dict(vocab_size=v, z_channels=32, ch=args.vae_ch))
    load_state_dict_strict(policy.var, official.state_dict(), source='the official VAR')
    load_state_dict_strict(policy.vae, vae.state_dict(), source='the official VQVAE')
    policy.eval()
    if not args.decode:
        official.vae_proxy = (_Proxy(vae),)
    def make_sampler(packed: Optional[bool]):
        return NextScaleSampler(cfg_scale=args.cfg, temperature=1.0, top_k=args.top_k,
                                top_p=args.top_p, logprob_cfg='none', decode_images=args.decode,
                                **_packing(packed))
    sampler = make_sampler(True if args.plain_too else None)
    plain = make_sampler(False) if args.plain_too else None
    labels = _labels(args.batch, nc)
    cond = policy.encode_conditions(Conditions(class_ids=labels))
    official_top_p = 0.0 if args.top_p >= 1 else args.top_p
    ids: list = []
    official.vae_quant_proxy[0].embedding.register_forward_hook(
        lambda mod, inp, out: ids.append(inp[0].detach().clone()))

    def run_official():
        _seed(args.seed)
        ids.clear()
        with cpu_shims(), torch.no_grad():
            img = official.autoregressive_infer_cfg(B=args.batch, label_B=labels, g_seed=None,
                                                    cfg=args.cfg - 1, top_k=args.top_k,
                                                    top_p=official_top_p, more_smooth=False)
        return torch.cat(ids, dim=1).long(), (img if args.decode else None)

    def runner(smp):
        def run():
            _seed(args.seed)
            r = smp.rollout(policy, cond, group_size=1, rng=None)
            return r.actions, r.images
        return run

    extra = [Side('vargo_plain', runner(plain), _count(policy.var))] if args.plain_too else []
    return dict(official=Side('official', run_official, _count(official)),
                vargo=Side('vargo', runner(sampler), _count(policy.var)), extra=extra,
                packed_weights=sampler._packs.enabled,
                policy=policy, steps=len(pn), step_unit='scale', compare=_same_var,
                compared='sampled tokens of every scale, identical' +
                         ('; decoded images, max |diff| reported' if args.decode else ''),
                raster=False,
                settings=dict(patch_nums=list(pn), tokens=sum(p * p for p in pn),
                              cfg_official=args.cfg - 1, top_p_official=official_top_p,
                              depth=depth, vae_ch=args.vae_ch, decode=args.decode))


def build_mar(args, root: str) -> dict:
    """Official ``MAR.sample_tokens`` and vargo's ``MARPolicy`` + ``MaskedSampler``."""
    from functools import partial

    import torch
    from torch import nn

    from vargo.components.policies.mar import MAR_ARCHS, MARPolicy
    from vargo.components.samplers.masked import MaskedSampler
    from vargo.core.checkpoint import load_state_dict_strict
    from vargo.core.types import Conditions

    mar_mod, = import_official('mar', root, ('models.mar',))
    name = MAR_ALIASES.get(args.arch, args.arch)
    if name in MAR_ARCHS:
        arch = dict(MAR_ARCHS[name])
    else:
        arch = _json_arch(args.arch, f'one of {", ".join(MAR_ARCHS)}, MAR-B/L/H or a JSON dict '
                                     'such as {"embed_dim": 64, "depth": 2, "num_heads": 2, '
                                     '"diffloss_d": 1, "diffloss_w": 64}')
    try:
        e, d, h = arch['embed_dim'], arch['depth'], arch['num_heads']
        dd, dw = arch['diffloss_d'], arch['diffloss_w']
    except KeyError as err:
        raise UsageError(f'--arch {args.arch!r} lacks {err.args[0]!r}') from None
    nc, side = args.num_classes, args.image_size // 16
    torch.manual_seed(args.seed)
    with cpu_shims():
        official = mar_mod.MAR(
            img_size=args.image_size, vae_stride=16, patch_size=1, encoder_embed_dim=e,
            encoder_depth=d, encoder_num_heads=h, decoder_embed_dim=e, decoder_depth=d,
            decoder_num_heads=h, mlp_ratio=4, norm_layer=partial(nn.LayerNorm, eps=1e-6),
            vae_embed_dim=16, class_num=nc, buffer_size=args.buffer_size, diffloss_d=dd,
            diffloss_w=dw, num_sampling_steps=str(args.head_steps))
    official.eval()
    _perturb(official, args.seed, args.perturb)
    vae = dict(embed_dim=16, ch=16, ch_mult=(1, 1, 1, 1, 2), resolution=args.image_size,
               enc_attn_resolutions=(), num_groups=8)      # never used: images not decoded
    policy = MARPolicy(arch=arch, image_size=args.image_size, num_classes=nc,
                       buffer_size=args.buffer_size, tokenizer=vae)
    load_state_dict_strict(policy.mar, official.state_dict(), source='the official MAR')
    policy.eval()
    def make_sampler(packed: Optional[bool]):
        return MaskedSampler(num_iter=args.steps, num_sampling_steps=args.head_steps,
                             cfg_scale=args.cfg, cfg_schedule='linear',
                             temperature=args.temperature, logprob_cfg='rollout',
                             decode_images=False, **_packing(packed))
    sampler = make_sampler(True if args.plain_too else None)
    plain = make_sampler(False) if args.plain_too else None
    labels = _labels(args.batch, nc)
    cond = policy.encode_conditions(Conditions(class_ids=labels))

    def run_official():
        _seed(args.seed)
        with cpu_shims(), torch.no_grad():
            return official.sample_tokens(args.batch, num_iter=args.steps, cfg=args.cfg,
                                          cfg_schedule='linear', labels=labels,
                                          temperature=args.temperature)

    def runner(smp):
        def run():
            _seed(args.seed)
            tok = smp.rollout(policy, cond, group_size=1, rng=None).extras.tokens  # [B, N, D]
            return tok.reshape(len(tok), side, side, -1).permute(0, 3, 1, 2)
        return run

    extra = [Side('vargo_plain', runner(plain), _count(policy.mar))] if args.plain_too else []
    return dict(official=Side('official', run_official, _count(official)),
                vargo=Side('vargo', runner(sampler), _count(policy.mar)), extra=extra,
                packed_weights=sampler._packs.enabled,
                policy=policy, steps=args.steps, step_unit='AR step',
                compare=lambda a, b: _close_latents(a, b, args.atol),
                compared=f'final token latents, max |diff| <= {args.atol:g}', raster=False,
                settings=dict(num_iter=args.steps, head_steps=args.head_steps,
                              cfg_schedule='linear', image_size=args.image_size,
                              buffer_size=args.buffer_size, arch=arch))


# ---------------------------------------------------------------------------------------------
# --decoder: the image decoders of each family
# ---------------------------------------------------------------------------------------------

def _vae_args(args, default: dict) -> dict:
    """vargo's tokenizer arguments: ``--vae`` (JSON dict) or ``default``."""
    if args.vae is None:
        return dict(default)
    return _json_arch(args.vae, 'a JSON dict of vargo tokenizer arguments')


def _decoder_sides(official_run, vargo_run, official, vargo, what: str, settings: dict,
                   args) -> dict:
    """The built dict of ``--decoder``: times per image, images within ``--atol``."""
    atol = args.atol
    return dict(official=Side('official', official_run, _count(official)),
                vargo=Side('vargo', vargo_run, _count(vargo)), extra=[], packed_weights=None,
                policy=None, steps=args.batch, step_unit='image',
                compare=lambda a, b: _close_images(a, b, atol),
                compared=f'decoded images, max |diff| <= {atol:g}', raster=False,
                settings=dict(decoder=what, **settings))


def build_llamagen_decoder(args, root: str) -> dict:
    """Official ``VQ_models['VQ-16']`` ``decode_code`` and vargo's ``VQModel`` on the same ids."""
    import torch

    from vargo.components.tokenizers import build_vq
    from vargo.core.checkpoint import load_state_dict_strict
    vq_mod, = import_official('llamagen', root, ('tokenizer.tokenizer_image.vq_model',))
    side, dim = math.isqrt(args.steps), 8
    torch.manual_seed(args.seed)
    official = vq_mod.VQ_models['VQ-16'](codebook_size=args.vocab,
                                         codebook_embed_dim=dim).eval()
    _perturb(official, args.seed, args.perturb)
    cfg = {**_vae_args(args, dict(preset='VQ-16')), 'codebook_size': args.vocab,
           'codebook_embed_dim': dim}
    vq = build_vq(cfg).eval()
    load_state_dict_strict(vq, official.state_dict(), source='the official VQ-16')
    ids = torch.randint(args.vocab, (args.batch, side * side),
                        generator=torch.Generator().manual_seed(args.seed))
    shape = (args.batch, dim, side, side)
    return _decoder_sides(lambda: official.decode_code(ids, shape), lambda: vq.decode_code(ids, shape),
                          official, vq, 'VQ-16 decode_code', dict(tokens=side * side, vae=cfg),
                          args)


def build_var_decoder(args, root: str) -> dict:
    """Official ``VQVAE.idxBl_to_img`` and vargo's ``MultiScaleVQVAE`` on the same ids."""
    import torch

    from vargo.components.tokenizers import build_msvq
    from vargo.core.checkpoint import load_state_dict_strict
    vqvae_mod, = import_official('var', root, ('models.vqvae',))
    pn, v = tuple(args.patch_nums), args.vocab
    torch.manual_seed(args.seed)
    with contextlib.redirect_stdout(io.StringIO()):
        official = vqvae_mod.VQVAE(vocab_size=v, z_channels=32, ch=args.vae_ch, test_mode=True,
                                   share_quant_resi=4, v_patch_nums=pn)
    official.eval()
    _perturb(official, args.seed, args.perturb)
    cfg = {**_vae_args(args, dict(z_channels=32, ch=args.vae_ch)), 'vocab_size': v}
    vae = build_msvq(cfg, patch_nums=pn)
    load_state_dict_strict(vae, official.state_dict(), source='the official VQVAE')
    g = torch.Generator().manual_seed(args.seed)
    ms_idx = [torch.randint(v, (args.batch, p * p), generator=g) for p in pn]
    return _decoder_sides(
        lambda: official.idxBl_to_img(ms_idx, same_shape=True, last_one=True),
        lambda: vae.idxBl_to_img(ms_idx), official, vae, 'VQVAE idxBl_to_img',
        dict(patch_nums=list(pn), vae=cfg), args)


def build_mar_decoder(args, root: str) -> dict:
    """Official ``AutoencoderKL.decode`` and vargo's ``KLVAE.decode`` on the same latents."""
    import torch

    from vargo.components.tokenizers import build_kl_vae
    from vargo.core.checkpoint import load_state_dict_strict
    vae_mod, = import_official('mar', root, ('models.vae',))
    torch.manual_seed(args.seed)
    official = vae_mod.AutoencoderKL(embed_dim=16, ch_mult=(1, 1, 2, 2, 4), ckpt_path=None).eval()
    _perturb(official, args.seed, args.perturb)
    cfg = _vae_args(args, dict(preset='kl16'))
    vae = build_kl_vae(cfg).eval()
    load_state_dict_strict(vae, official.state_dict(), source='the official KL-16 VAE')
    side = args.image_size // vae.downsample
    z = torch.randn(args.batch, vae.embed_dim, side, side,
                    generator=torch.Generator().manual_seed(args.seed))
    return _decoder_sides(lambda: official.decode(z), lambda: vae.decode(z), official, vae,
                          'KL-16 decode', dict(image_size=args.image_size, vae=cfg), args)


DECODER_BUILDERS = {'llamagen': build_llamagen_decoder, 'var': build_var_decoder,
                    'mar': build_mar_decoder}


BUILDERS = {'llamagen': build_llamagen, 'var': build_var, 'mar': build_mar}


def _packing(packed: Optional[bool]) -> dict:
    """The sampler's ``packed_weights`` argument: its default when None."""
    return {} if packed is None else {'packed_weights': packed}


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------------------------
# agreement
# ---------------------------------------------------------------------------------------------

def _same_tokens(official, vargo) -> dict:
    """Identical token ids, or the count and first position of the differences."""
    if official.shape != vargo.shape:
        return dict(agree=False, detail=f'token shapes differ: official {tuple(official.shape)},'
                                        f' vargo {tuple(vargo.shape)}')
    diff = (official != vargo.to(official.device))
    n = int(diff.sum())
    out = dict(agree=n == 0, tokens=official.numel(), differing=n)
    if n:
        b, i = (int(x) for x in diff.nonzero()[0])
        out['detail'] = f'{n} of {official.numel()} tokens differ (first: image {b}, token {i})'
    return out


def _same_var(official, vargo) -> dict:
    out = _same_tokens(official[0], vargo[0])
    if official[1] is not None and vargo[1] is not None:
        out['image_max_abs_diff'] = float((official[1] - vargo[1]).abs().max())
    return out


def _close(official, vargo, atol: float, what: str, key: str) -> dict:
    """Same shape and max |diff| <= ``atol`` (reported under ``key``, with the official
    output's largest magnitude under ``official_max_abs`` to read the difference against)."""
    if official.shape != vargo.shape:
        return dict(agree=False, detail=f'{what} shapes differ: official '
                                        f'{tuple(official.shape)}, vargo {tuple(vargo.shape)}')
    d = float((official - vargo).abs().max())
    scale = float(official.abs().max())
    out = {'agree': d <= atol, key: d, 'atol': atol, 'official_max_abs': scale}
    if not out['agree']:
        out['detail'] = (f'{what}s max |diff| {d:.3g} > --atol {atol:g} '
                         f'(official max |value| {scale:.3g})')
    return out


def _close_latents(official, vargo, atol: float) -> dict:
    return _close(official, vargo, atol, 'latent', 'max_abs_diff')


def _close_images(official, vargo, atol: float) -> dict:
    return _close(official, vargo, atol, 'image', 'image_max_abs_diff')


# ---------------------------------------------------------------------------------------------
# measuring
# ---------------------------------------------------------------------------------------------

def interleaved(official: Side, vargo: Side, compare, rounds: int, warmup: int,
                extra: Sequence[Side] = ()) -> dict:
    """``warmup`` untimed then ``rounds`` timed runs of each side (official, vargo, then any
    ``extra`` vargo variants), alternating; every vargo-side run's outputs compared with the
    official run's of the same round (:class:`OutputsDisagree` at the first disagreement)."""
    timed = _benchmark_helpers().timed
    sides = [official, vargo, *extra]
    times: dict[str, list[float]] = {side.name: [] for side in sides}
    checks = []
    for k in range(warmup + rounds):
        outs = {}
        for side in sides:
            t, outs[side.name] = timed(side.run, repeat=1, warmup=0)
            if k >= warmup:
                times[side.name] += t
        for side in sides[1:]:
            check = compare(outs['official'], outs[side.name])
            if side is not vargo:
                check = {**check, 'side': side.name}
            checks.append(check)
            if not check['agree']:
                what = 'warm-up run' if k < warmup else 'timed round'
                who = '' if side is vargo else f' ({side.name})'
                raise OutputsDisagree(f'{what} {k + 1 if k < warmup else k - warmup + 1}{who}: '
                                      f'{check["detail"]}')
    return {'times': times, 'checks': checks}


def kv_cache_read_bytes(policy, rows: int, cond_positions: int, steps: int) -> float:
    """Mean bytes of KV cache a decode step reads: the cache's bytes per position (every
    layer's keys and values for ``rows`` rows, from ``policy.new_decoding_cache``) times the
    positions a step attends to, averaged over the ``steps`` steps (step 0 attends to the ``C =
    cond_positions`` condition positions, step ``i`` to ``C + i``: on average ``C + (steps - 1)
    / 2``)."""
    cache = policy.new_decoding_cache(rows)
    per_position = cache.kv.numel() * cache.kv.element_size() / cache.max_len
    return per_position * (cond_positions + (steps - 1) / 2)


def time_decode_products(policy, packs, rows: int, repeat: int) -> dict:
    """The linear layers of ``policy.decoding_modules()`` alone, as a decode step runs them:
    one pass over every layer, in module order, on ``rows`` random input rows, through the
    sampler's own kernels (``packs``, its :class:`PackedLinears`: the packed copy where it packs
    one, else ``F.linear``). Each pass reads every weight once, as a step does, so on a model
    larger than the caches it is the time these kernels need to stream the weights, without
    attention, norms or sampling. Returns ``{'layers', 'weight_bytes', 'rows', 'ms': stats,
    'gbps': {'median', 'best'}}`` over ``repeat`` timed passes after one warm-up."""
    import torch
    from torch import nn
    bench = _benchmark_helpers()
    roots = policy.decoding_modules()
    packs.prepare(policy, rows)
    seen, layers = set(), []
    for root in roots:
        for m in root.modules():
            if isinstance(m, nn.Linear) and id(m) not in seen:
                seen.add(id(m))
                layers.append(m)
    inputs = {n: torch.randn(rows, n) for n in {m.in_features for m in layers}}

    def one_pass():
        with packs.active():
            for m in layers:
                m(inputs[m.in_features])

    times, _ = bench.timed(one_pass, repeat)
    nbytes = sum(m.weight.numel() * m.weight.element_size() for m in layers)
    ms = bench.stats([1000 * t for t in times])
    return {'layers': len(layers), 'weight_bytes': nbytes, 'rows': rows, 'ms': ms,
            'gbps': {'median': nbytes / (ms['median'] * 1e6), 'best': nbytes / (ms['min'] * 1e6)}}


def run(args) -> dict:
    """Build both sides, probe the machine, time the interleaved rounds; the result dict."""
    import torch

    from vargo.core.eval_protocol import git_commit
    bench = _benchmark_helpers()
    decoder = args.decoder
    root = check_checkout(args.family, args.official,
                          DECODER_FILES[args.family] if decoder else None)
    torch.set_num_threads(args.threads)
    res: dict[str, Any] = {
        'family': args.family, 'official_dir': root, 'official_repo': CHECKOUTS[args.family][1],
        'official_commit': git_commit(root), **bench.run_provenance(),
        'arch': args.arch, 'batch': args.batch,
        'cfg': args.cfg, 'top_k': args.top_k, 'top_p': args.top_p,
        'temperature': args.temperature, 'seed': args.seed, 'perturb': args.perturb,
        'threads': torch.get_num_threads(), 'rounds': args.rounds, 'warmup': args.warmup,
        'torch': torch.__version__, 'python': platform.python_version(),
        'cpu': bench.cpu_model(), 'cpu_count': os.cpu_count(),
        'load_average_start': bench.load_average(),
    }
    with torch.no_grad():
        built = (DECODER_BUILDERS if decoder else BUILDERS)[args.family](args, root)
    res['part'] = 'decoder' if decoder else 'sampler'
    res['settings'] = built['settings']
    res['steps'], res['step_unit'] = built['steps'], built['step_unit']
    res['params'] = {'official': built['official'].params, 'vargo': built['vargo'].params}
    res['compared'] = built['compared']
    res['vargo_packed_weights'] = built['packed_weights']
    machine = {'gemm': bench.bench_gemm(args.gemm_size, 3),
               'bandwidth': bench.bench_bandwidth(args.bandwidth_mb, 3)}
    with torch.no_grad():
        timing = interleaved(built['official'], built['vargo'], built['compare'], args.rounds,
                             args.warmup, built.get('extra', ()))
    rows = args.batch * (2 if args.cfg != 1 else 1)     # a raster step's rows, CFG included
    products_alone = None
    if built.get('raster'):
        with torch.no_grad():
            products_alone = time_decode_products(built['policy'], built['packs'], rows, 5)
    machine['gemm_end'] = bench.bench_gemm(args.gemm_size, 3)
    machine['gemm_peak'] = bench.gemm_peak([machine['gemm'], machine['gemm_end']])
    res['machine'] = machine
    res['agreement'] = {'compared': built['compared'], 'runs_checked': args.warmup + args.rounds,
                        'checks': timing['checks']}
    steps = built['steps']
    for name, values in timing['times'].items():
        res[name] = {'time_s': bench.stats(values),
                     'ms_per_step': bench.stats([1000 * v / steps for v in values])}
    ratios = [o / v for o, v in zip(timing['times']['official'], timing['times']['vargo'])]
    res['ratio_official_over_vargo'] = bench.stats(ratios)
    if 'vargo_plain' in timing['times']:
        res['ratio_plain_over_packed'] = bench.stats(
            [p / v for p, v in zip(timing['times']['vargo_plain'], timing['times']['vargo'])])
    if built['raster']:
        wb = bench.weight_bytes(built['policy'])
        read = machine['bandwidth']['read_gbps']
        res['weight_bytes'] = wb
        res['weight_read_floor_ms_per_step'] = {'median': 1000 * wb / (read['median'] * 1e9),
                                                'min': 1000 * wb / (read['best'] * 1e9)}
        # the same weights multiply every row of the step (CFG doubles the rows): at B rows a
        # step is 2 B FLOP per weight, so small batches are bandwidth-bound and larger ones
        # compute-bound; the floor of a step is the larger of the two
        flops = 2 * rows * sum(p.numel() for p in bench.decode_weights(built['policy']))
        res['step_gflop'] = flops / 1e9
        res['compute_floor_ms_per_step'] = 1000 * flops / (machine['gemm_peak']['gflops'] * 1e9)
        kv = kv_cache_read_bytes(built['policy'], rows, built['cond_positions'], steps)
        res['kv_cache_read_bytes_per_step'] = kv
        res['memory_floor_ms_per_step'] = {'median': 1000 * (wb + kv) / (read['median'] * 1e9),
                                           'min': 1000 * (wb + kv) / (read['best'] * 1e9)}
        res['products_alone'] = products_alone
    res['load_average_end'] = bench.load_average()
    return res


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------

def _num(x: float) -> str:
    return f'{x:,.0f}' if abs(x) >= 1000 else f'{x:.3g}'


def _rng(d: dict) -> str:
    return f'{_num(d["median"])} [{_num(d["min"])}, {_num(d["max"])}]'


def table(res: dict) -> str:
    """The Markdown table printed by the tool."""
    o, v, r, m = res['official'], res['vargo'], res['ratio_official_over_vargo'], res['machine']
    unit = res['step_unit']
    what = (f'{res["family"]} {res["arch"]}, batch {res["batch"]}, CFG {res["cfg"]:g}, '
            f'{res["steps"]} {unit}s' if res.get('part') != 'decoder' else
            f'{res["family"]} image decoder ({res["settings"]["decoder"]}), {res["steps"]} '
            f'{unit}s')
    lines = [
        f'{what}, threads {res["threads"]}, {res["rounds"]} interleaved rounds '
        f'after {res["warmup"]} warm-up; {res["cpu"]}, torch {res["torch"]}; load average '
        f'{res["load_average_start"]} at start, {res["load_average_end"]} at end' +
        ('' if res.get('vargo_packed_weights') is None else
         f'; vargo packed_weights={res["vargo_packed_weights"]}'),
        '',
        '| measurement (median [min, max]) | official | vargo | official / vargo |',
        '|---|---|---|---|',
        f'| seconds per run | {_rng(o["time_s"])} | {_rng(v["time_s"])} | {_rng(r)} |',
        f'| ms per {unit} | {_rng(o["ms_per_step"])} | {_rng(v["ms_per_step"])} | |',
    ]
    if 'vargo_plain' in res:
        pl = res['vargo_plain']
        lines.append(f'| ms per {unit}, vargo with plain F.linear (packed_weights=False) | | '
                     f'{_rng(pl["ms_per_step"])} | plain / packed: '
                     f'{_rng(res["ratio_plain_over_packed"])} |')
    if 'weight_read_floor_ms_per_step' in res:
        fl = res['weight_read_floor_ms_per_step']
        lines.append(f'| weight-read floor, ms per {unit} ({res["weight_bytes"] / 1e6:.0f} MB '
                     f'/ read bandwidth) | {fl["median"]:.3g} (best {fl["min"]:.3g}) | | |')
        lines.append(f'| compute floor, ms per {unit} ({res["step_gflop"]:.2f} GFLOP at the GEMM '
                     f'peak) | {res["compute_floor_ms_per_step"]:.3g} | | |')
        if 'memory_floor_ms_per_step' in res:
            mf, kv = res['memory_floor_ms_per_step'], res['kv_cache_read_bytes_per_step']
            lines.append(f'| memory floor, ms per {unit} (weights + a mean {kv / 1e6:.0f} MB of KV '
                         f'cache / read bandwidth) | {mf["median"]:.3g} (best {mf["min"]:.3g}) '
                         f'| | |')
        pa = res.get('products_alone')
        if pa:
            lines.append(f'| vargo\'s linear layers alone, ms per {unit} (one pass over its '
                         f'{pa["layers"]} layers at {pa["rows"]} rows, its kernels) | | '
                         f'{_num(pa["ms"]["median"])} (best {_num(pa["ms"]["min"])}; '
                         f'{pa["gbps"]["best"]:.3g} GB/s) | |')
    bw, probes = m['bandwidth'], [round(x, 1) for x in m['gemm_peak']['probes_gflops']]
    lines += [
        f'| fp32 GEMM peak, GFLOP/s (best of probes {probes}) | {m["gemm_peak"]["gflops"]:.1f} '
        f'| | |',
        f'| memory read / copy, GB/s (median) | {bw["read_gbps"]["median"]:.2f} / '
        f'{bw["copy_gbps"]["median"]:.2f} | | |',
        '',
        f'agreement: {res["agreement"]["compared"]} in all {res["agreement"]["runs_checked"]} '
        f'runs of each side' + _worst(res['agreement']['checks']),
    ]
    return '\n'.join(lines)


def _worst(checks: list[dict]) -> str:
    """The largest max |diff| over the runs, where one was measured."""
    out = ''
    for key, what in (('max_abs_diff', 'latents'), ('image_max_abs_diff', 'images')):
        values = [c for c in checks if c.get(key) is not None]
        if values:
            worst = max(values, key=lambda c: c[key])
            out += f'; {what} max |diff| {worst[key]:.3g}'
            if worst.get('official_max_abs') is not None:
                out += f' (official max |value| {worst["official_max_abs"]:.3g})'
    return out


def main(argv=None) -> int:
    from vargo.core.cli import fail
    from vargo.core.cli import apply_heap_setting
    args = parse_args(argv)
    heap = apply_heap_setting()   # README "Heap": both implementations run on the same heap
    try:
        res = run(args)
    except UsageError as e:
        return fail(e)
    except OutputsDisagree as e:
        print(f'error: the outputs disagree, no ratio reported: {e}', file=sys.stderr)
        return 1
    res = _benchmark_helpers()._jsonable({**res, 'heap': heap})
    print(table(res))
    _benchmark_helpers().write_result(res, args.out)
    print(f'wrote {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
