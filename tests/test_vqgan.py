"""VQGAN transformer (taming-transformers): official structure and sizes, parity fixtures computed
from the official code, KV cache, sampler <-> teacher-forced log-probs, strict loading.

The official code is not part of the repository: the pinned numbers below (parameter counts, key
digests, tests/fixtures/vqgan_official_parity.json) were computed from it on the same seeded
weights; the docstring of the vargo.components.policies.vqgan package records how.
"""
import hashlib
import json
import os
import pickle
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from vargo.components.policies.vqgan import (LIGHTNING_CALLBACK_KEYS, MinGPTConfig,
                                             VQGANTransformerPolicy)
from vargo.components.samplers import ARSampler
from vargo.components.tokenizers.vqgan import VQGAN, VQGAN_PRESETS, build_vqgan
from vargo.core.checkpoint import CheckpointRefused, StateDictMismatch
from vargo.core.registry import POLICIES
from vargo.core.types import Conditions

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ---- the seeded tiny model the parity fixture was computed on -------------------------------
FIX = dict(V=64, block_size=16, arch=dict(n_layer=2, n_head=2, n_embd=32),
           tok=dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
                    resolution=8, z_channels=32, embed_dim=8),
           weight_seed=7, input_seed=11, classes=[3, 7],
           samplers=[dict(seed=0, top_k=0, top_p=1.0, temperature=1.0),
                     dict(seed=1, top_k=8, top_p=0.9, temperature=0.9),
                     dict(seed=2, top_k=20, top_p=1.0, temperature=1.2)])
_NORMS = ('ln1.weight', 'ln2.weight', 'ln_f.weight', 'norm.weight', 'norm1.weight',
          'norm2.weight', 'norm_out.weight')


def seeded_state(state):
    """Deterministic weights for the keys of ``state`` (sorted key order, one generator): unit
    norms +- 0.1, a spread codebook, a peaky head, small everything else."""
    g = torch.Generator().manual_seed(FIX['weight_seed'])
    out = {}
    for k in sorted(state):
        z = torch.randn(state[k].shape, generator=g)
        if k.endswith(_NORMS):
            out[k] = 1 + 0.1 * z
        elif k == 'quantize.embedding.weight':
            out[k] = z
        elif k == 'head.weight':
            out[k] = 0.5 * z
        else:
            out[k] = 0.1 * z
    return out


def fixture_policy():
    pol = VQGANTransformerPolicy(arch=FIX['arch'], image_size=FIX['tok']['resolution'],
                                 num_classes=10, vocab_size=FIX['V'],
                                 tokenizer=dict(FIX['tok'], n_embed=FIX['V'])).eval()
    pol.transformer.load_state_dict(seeded_state(pol.transformer.state_dict()))
    pol.vq.load_state_dict(seeded_state(pol.vq.state_dict()))
    return pol


V = 64
TINY_ARCH = dict(n_layer=2, n_head=4, n_embd=32)
TINY_TOK = dict(n_embed=V, embed_dim=8, ch=16, ch_mult=(1, 2, 2), num_res_blocks=1,
                attn_resolutions=(4,), resolution=16, z_channels=16, norm_groups=4)


def make_policy(**kw):
    args = dict(arch=TINY_ARCH, image_size=16, num_classes=10, vocab_size=V, tokenizer=TINY_TOK)
    args.update(kw)
    pol = VQGANTransformerPolicy(**args)
    if 'checkpoint' not in kw:
        with torch.no_grad():     # official init: zero pos_emb, N(0, .02) head: make it peaky
            g = torch.Generator().manual_seed(0)
            for p in pol.transformer.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=g))
            pol.transformer.head.weight.normal_(0, 0.6, generator=g)
    return pol


def conditions(n=2):
    return Conditions(class_ids=torch.tensor([3, 7, 1, 0][:n]))


def _digest(state):
    lines = '\n'.join(f'{k}:{tuple(v.shape)}' for k, v in sorted(state.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


# ---- official sizes (computed from taming-transformers on the meta device) ------------------

#: the cin Net2NetTransformer: GPT(16384, 256, n_layer=48, n_head=24, n_embd=1536), VQModel
#: f16-16384 (embed_dim 256), Labelator(1000) (no weights), lossconfig without weights
CIN = dict(net2net_keys=1164,
           net2net_digest='101f12a113a92c5e3e6e0f6b7ab5e679ed592b25dc84843dbf4f0e700c84e3d0',
           transformer_keys=821, transformer_params=1_410_640_896,
           transformer_state_numel=1_413_786_624,   # + 48 causal masks [1, 1, 256, 256]
           transformer_digest='70a89cae7b4dbdbd8d602e10a926de412466bbd4b417f37db58322d14350e19d',
           first_stage_keys=343, first_stage_params=76_073_859,
           first_stage_digest='1ba977bc99f222b3aac9cdeb73b6e58ebfefad0d649b269ddf4b632c452916d2')


def test_cin_sizes_keys_and_digests_match_the_official_model():
    with torch.device('meta'):
        pol = VQGANTransformerPolicy()
    gpt = dict(pol.transformer.state_dict())
    assert sum(p.numel() for p in pol.transformer.parameters()) == CIN['transformer_params']
    masks = {f'blocks.{i}.attn.mask': torch.empty(1, 1, 256, 256, device='meta')
             for i in range(48)}      # official buffers, dropped when loading (recomputed)
    gpt.update(masks)
    assert len(gpt) == CIN['transformer_keys']
    assert sum(v.numel() for v in gpt.values()) == CIN['transformer_state_numel']
    assert _digest(gpt) == CIN['transformer_digest']
    vq = pol.vq.state_dict()
    assert len(vq) == CIN['first_stage_keys'] and _digest(vq) == CIN['first_stage_digest']
    assert sum(p.numel() for p in pol.vq.parameters()) == CIN['first_stage_params']
    net2net = {**{f'transformer.{k}': v for k, v in gpt.items()},
               **{f'first_stage_model.{k}': v for k, v in vq.items()}}
    assert len(net2net) == CIN['net2net_keys'] and _digest(net2net) == CIN['net2net_digest']
    assert pol.num_actions == 256 and pol.cfg.block_size == 256 and pol.vq.downsample == 16


def test_official_key_names_and_shapes():
    with torch.device('meta'):
        pol = VQGANTransformerPolicy()
    g, q = pol.transformer.state_dict(), pol.vq.state_dict()
    assert tuple(g['pos_emb'].shape) == (1, 256, 1536)
    assert tuple(g['tok_emb.weight'].shape) == (16384, 1536)
    assert tuple(g['blocks.47.attn.query.bias'].shape) == (1536,)
    assert tuple(g['blocks.0.mlp.0.weight'].shape) == (6144, 1536)
    assert tuple(g['blocks.0.mlp.2.weight'].shape) == (1536, 6144)
    assert tuple(g['head.weight'].shape) == (16384, 1536) and 'head.bias' not in g
    assert tuple(q['quantize.embedding.weight'].shape) == (16384, 256)
    assert tuple(q['encoder.conv_out.weight'].shape) == (256, 512, 3, 3)      # double_z=False
    assert tuple(q['encoder.down.4.attn.1.q.weight'].shape) == (512, 512, 1, 1)
    assert tuple(q['decoder.up.4.attn.2.proj_out.weight'].shape) == (512, 512, 1, 1)
    assert 'decoder.up.3.attn.0.q.weight' not in q and 'decoder.up.0.upsample.conv.weight' not in q
    assert tuple(q['quant_conv.weight'].shape) == (256, 256, 1, 1)
    assert VQGAN_PRESETS['f16-1024']['n_embed'] == 1024


# ---- parity with the official code (fixture computed from it) -----------------------------------

@pytest.fixture(scope='module')
def official():
    with open(os.path.join(ROOT, 'tests', 'fixtures', 'vqgan_official_parity.json')) as f:
        return json.load(f)


def test_teacher_forced_logits_equal_the_official_gpt(official):
    pol = fixture_policy()
    g = torch.Generator().manual_seed(FIX['input_seed'])
    c = torch.tensor(FIX['classes'])
    tokens = torch.randint(0, FIX['V'], (len(c), FIX['block_size']), generator=g)
    with torch.no_grad():
        logits = pol.transformer(pol.sequence(Conditions(class_ids=c), tokens[:, :-1]))
    torch.testing.assert_close(logits[..., :16], torch.tensor(official['logits_first16']),
                               atol=2e-5, rtol=0)
    assert float(logits.double().sum()) == pytest.approx(official['logits_sum'], abs=1e-3)
    assert float(logits.double().abs().sum()) == pytest.approx(official['logits_abs_sum'],
                                                               rel=1e-6)


def test_tokenizer_encode_decode_equal_the_official_vqgan(official):
    pol = fixture_policy()
    g = torch.Generator().manual_seed(FIX['input_seed'])
    torch.randint(0, FIX['V'], (2, FIX['block_size']), generator=g)      # the tokens above
    images = torch.rand(2, 3, 8, 8, generator=g)
    ids = pol.vq.encode(images)
    assert ids.tolist() == official['encode_indices']
    with torch.no_grad():
        raw = pol.vq.decode_code(ids, 4)
    torch.testing.assert_close(raw, torch.tensor(official['decode']), atol=2e-5, rtol=0)
    assert torch.equal(pol.vq.decode(ids), ((raw + 1) / 2).clamp(0, 1))


@pytest.mark.parametrize('i', range(len(FIX['samplers'])))
def test_sampled_tokens_equal_the_official_sample_with_past(official, i):
    """ARSampler without a BatchRNG draws with torch.multinomial on the global generator, as
    scripts/sample_fast.py does: the same seed gives the official tokens."""
    s = FIX['samplers'][i]
    pol = fixture_policy()
    sampler = ARSampler(cfg_scale=1.0, temperature=s['temperature'], top_k=s['top_k'],
                        top_p=s['top_p'], logprob_cfg='rollout', decode_images=False)
    torch.manual_seed(s['seed'])
    roll = sampler.rollout(pol, Conditions(class_ids=torch.tensor(FIX['classes'])),
                           group_size=2)
    assert roll.actions.tolist() == official['samples'][i]
    ev = pol.evaluate(roll, spec=sampler.logprob_spec())
    torch.testing.assert_close(ev.logp.detach(), roll.logp_old, atol=2e-5, rtol=0)


# ---- KV cache == full forward ------------------------------------------------------------------

def test_kv_cache_decoding_equals_the_uncached_forward():
    pol = make_policy().eval()
    gpt = pol.transformer
    b, t = 3, pol.num_actions
    seq = torch.cat([torch.tensor([[1], [4], [9]]), torch.randint(0, V, (b, t - 1))], dim=1)
    with torch.no_grad():
        full = gpt(seq)                                             # [B, T, V]
        cache = gpt.new_cache(b)
        steps = [gpt.forward_cached(seq[:, :1], 0, cache)[:, 0]]
        for p in range(1, t):
            steps.append(gpt.forward_cached(seq[:, p:p + 1], p, cache)[:, 0])
        cached = torch.stack(steps, dim=1)
        # a prefill of 1 + 5 positions, then 3 positions at once over the cache
        cache2 = gpt.new_cache(b)
        pre = gpt.forward_cached(seq[:, :6], 0, cache2)
        chunk = gpt.forward_cached(seq[:, 6:9], 6, cache2)
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pre, full[:, :6], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(chunk, full[:, 6:9], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match='block_size'):
        gpt(torch.zeros(1, t + 1, dtype=torch.long))


# ---- sampler <-> teacher-forced evaluation ------------------------------------------------------

@pytest.mark.parametrize('mode,temperature,top_k,top_p', [
    ('none', 1.0, 0, 1.0), ('rollout', 0.8, 0, 1.0), ('rollout', 1.0, 10, 0.9),
    ('none', 1.2, 10, 0.9)])
def test_evaluate_gives_the_sampler_logp_and_entropy(mode, temperature, top_k, top_p):
    from vargo.core.rng import BatchRNG
    pol = make_policy()
    sampler = ARSampler(cfg_scale=1.0, temperature=temperature, top_k=top_k, top_p=top_p,
                        logprob_cfg=mode, decode_images=True)
    roll = sampler.rollout(pol, conditions(), group_size=3,
                           rng=BatchRNG(5, 2, 6, rank=0, world_size=1))
    assert roll.actions.shape == (6, 16) and roll.images.shape == (6, 3, 16, 16)
    assert 0 <= float(roll.images.min()) and float(roll.images.max()) <= 1
    pol.train()
    ev = pol.evaluate(roll, spec=sampler.logprob_spec())
    torch.testing.assert_close(ev.logp.detach(), roll.logp_old, atol=2e-5, rtol=0)
    # the entropy of the scored distribution, computed directly from the uncached logits
    with torch.no_grad():
        z = pol.transformer(pol.sequence(roll.cond, roll.actions[:, :-1])) / temperature
    if mode == 'rollout' and top_k:
        from vargo.components.modules.categorical import truncation_keep_mask
        keep = truncation_keep_mask(z.flatten(0, 1), top_k, top_p).view(z.shape)
        z = z.masked_fill(~keep, float('-inf'))
    lp = torch.log_softmax(z, -1)
    ent = -(lp.exp() * lp.nan_to_num(neginf=0.0)).sum(-1)
    torch.testing.assert_close(ev.entropy.detach(), ent, atol=2e-5, rtol=0)
    ev.logp.sum().backward()
    assert pol.transformer.pos_emb.grad is not None and pol.vq.encoder.conv_in.weight.grad is None


def test_prefix_completion_keeps_the_prefix():
    pol = make_policy()
    sampler = ARSampler(cfg_scale=1.0, temperature=1.0, top_k=0, top_p=1.0,
                        logprob_cfg='rollout', decode_images=False)
    first = sampler.rollout(pol, conditions(), group_size=2)
    done = sampler.rollout(pol, first.cond, group_size=3, prefix=first, stop_at_step=5)
    assert torch.equal(done.actions[:, :5], first.actions.repeat_interleave(3, dim=0)[:, :5])
    assert not done.action_mask[:, :5].any() and done.action_mask[:, 5:].all()
    ev = pol.evaluate(done, spec=sampler.logprob_spec())
    torch.testing.assert_close(ev.logp.detach(), done.logp_old, atol=2e-5, rtol=0)


def test_guidance_is_refused_with_the_fix():
    pol = make_policy()
    sampler = ARSampler(cfg_scale=2.0, temperature=1.0, top_k=0, top_p=1.0, logprob_cfg='none',
                        decode_images=False)
    with pytest.raises(ValueError, match=r'no unconditional \(null\) class.*cfg_scale=1\.0'):
        sampler.rollout(pol, conditions(), group_size=2)
    with pytest.raises(ValueError, match='class ids must be in'):
        pol.encode_conditions(Conditions(class_ids=torch.tensor([10])))


# ---- policy surface ------------------------------------------------------------------------------

def test_actions_embeddings_axes_and_state_dict():
    pol = make_policy()
    sampler = ARSampler(cfg_scale=1.0, temperature=1.0, top_k=0, top_p=1.0, logprob_cfg='none',
                        decode_images=False)
    roll = sampler.rollout(pol, conditions(), group_size=2)
    emb = pol.embed_actions(roll)
    assert emb.shape == (4, 16, 8)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(4, 16))
    book = F.normalize(pol.vq.quantize.embedding.weight, dim=-1)
    assert torch.equal(emb, book[roll.actions])
    step, pos = pol.rollout_axes()
    assert step.tolist() == list(range(16)) and pos[5].tolist() == [1, 1]
    sd = pol.state_dict()
    assert sd and all(k.startswith('transformer.') for k in sd)
    assert pol.trainable_parameters() == list(pol.transformer.parameters())
    pol.train()
    assert pol.training and not pol.vq.training
    assert isinstance(POLICIES.build(dict(type='VQGANTransformerPolicy', arch=TINY_ARCH,
                                          image_size=16, num_classes=4, vocab_size=V,
                                          tokenizer=TINY_TOK)), VQGANTransformerPolicy)


def test_flops_count_the_matmuls_of_a_teacher_forced_forward():
    pol = make_policy()                          # T = 16, C = 32, 2 layers, V = 64
    s, c = 16, 32
    per_layer = 4 * (2 * s * c * c) + 2 * (2 * s * c * 4 * c) + 2 * c * s * (s + 1)
    assert pol.flops_per_sample() == 2 * per_layer + 2 * s * c * V
    with torch.device('meta'):
        cin = VQGANTransformerPolicy()
    # 1.4B parameters over 256 positions: about 2 * params * 256 plus attention
    assert cin.flops_per_sample() == 48 * (2 * 256 * 1536 * 12 * 1536
                                           + 2 * 1536 * 256 * 257) + 2 * 256 * 1536 * 16384
    assert 7.0e11 < cin.flops_per_sample() < 7.5e11


def test_pretrain_loss_is_next_token_cross_entropy():
    pol = make_policy()
    tokens = torch.randint(0, V, (3, 16))
    cond = Conditions(class_ids=torch.tensor([0, 1, 2]))
    loss = pol.pretrain_loss(tokens, cond)
    logits = pol.transformer(torch.cat([cond.class_ids[:, None], tokens[:, :-1]], 1))
    torch.testing.assert_close(loss, F.cross_entropy(logits.flatten(0, 1), tokens.flatten()))


def test_settings_are_checked_with_one_line_errors():
    with pytest.raises(ValueError, match='vocab_size'):
        make_policy(vocab_size=V + 1)
    with pytest.raises(ValueError, match='num_classes'):
        make_policy(num_classes=V + 1)
    with pytest.raises(ValueError, match='block_size'):
        make_policy(block_size=8)
    with pytest.raises(ValueError, match='n_head'):
        MinGPTConfig(vocab_size=8, block_size=4, n_layer=1, n_head=3, n_embd=32)
    with pytest.raises(ValueError, match='cin'):
        MinGPTConfig.from_arch('gpt2', vocab_size=8, block_size=4)
    with pytest.raises(ValueError, match='norm_groups'):
        VQGAN(ch=20, ch_mult=(1,), n_embed=8, embed_dim=4, z_channels=8, resolution=8)
    with pytest.raises(ValueError, match='f16-16384'):
        build_vqgan('f8')


# ---- official files: data-only reading, strict loading ---------------------------------------

def _lightning_ckpt(path, state, monkeypatch):
    """An official-layout Lightning 1.0 checkpoint: callback states keyed by the callback class
    (pickled as a global), the Net2NetTransformer state dict under "state_dict"."""
    mod = types.ModuleType('pytorch_lightning.callbacks.model_checkpoint')
    cls = type('ModelCheckpoint', (), {'__module__': mod.__name__})
    mod.ModelCheckpoint = cls
    for name in ('pytorch_lightning', 'pytorch_lightning.callbacks', mod.__name__):
        monkeypatch.setitem(sys.modules, name, mod if name == mod.__name__
                            else types.ModuleType(name))
    torch.save({'epoch': 3, 'global_step': 10, 'pytorch-lightning_version': '1.0.8',
                'callbacks': {cls: {'monitor': 'val/loss', 'best_model_score': torch.tensor(1.5)}},
                'optimizer_states': [], 'lr_schedulers': [], 'state_dict': state}, path)
    for name in ('pytorch_lightning', 'pytorch_lightning.callbacks', mod.__name__):
        monkeypatch.delitem(sys.modules, name)     # reading must not need the library


def _net2net_state(pol, n_layer=2):
    t = pol.cfg.block_size
    state = {f'transformer.{k}': v for k, v in pol.transformer.state_dict().items()}
    state.update({f'transformer.blocks.{i}.attn.mask': torch.ones(t, t).tril().view(1, 1, t, t)
                  for i in range(n_layer)})
    state.update({f'first_stage_model.{k}': v for k, v in pol.vq.state_dict().items()})
    return state


def test_official_lightning_checkpoint_loads_strictly_without_lightning(tmp_path, monkeypatch):
    src = make_policy()
    path = tmp_path / '2021-04-03T19-39-50_cin_transformer' / 'checkpoints' / 'last.ckpt'
    path.parent.mkdir(parents=True)
    _lightning_ckpt(path, _net2net_state(src), monkeypatch)
    assert 'pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint' in LIGHTNING_CALLBACK_KEYS
    dst = make_policy(checkpoint=str(path))
    for k, v in src.transformer.state_dict().items():
        assert torch.equal(dst.transformer.state_dict()[k], v), k
    assert torch.equal(dst.vq.quantize.embedding.weight, src.vq.quantize.embedding.weight)
    # a standalone VQGAN release: bare keys plus its training losses (dropped)
    vq_file = tmp_path / 'vqgan_imagenet_f16_16384' / 'checkpoints' / 'last.ckpt'
    vq_file.parent.mkdir(parents=True)
    _lightning_ckpt(vq_file, {**src.vq.state_dict(), 'loss.discriminator.main.0.weight':
                              torch.zeros(4, 3, 4, 4), 'loss.logvar': torch.zeros(())},
                    monkeypatch)
    other = make_policy(tokenizer_checkpoint=str(vq_file))
    assert torch.equal(other.vq.decoder.conv_out.weight, src.vq.decoder.conv_out.weight)


def _project_yaml(folder, *, n_head=4, cond='taming.modules.util.Labelator', ch_mult=(1, 2, 2)):
    (folder / 'configs').mkdir(parents=True, exist_ok=True)
    (folder / 'configs' / '2021-04-03T19-39-50-project.yaml').write_text(f'''model:
  base_learning_rate: 4.5e-06
  target: taming.models.cond_transformer.Net2NetTransformer
  params:
    cond_stage_key: class_label
    transformer_config:
      target: taming.modules.transformer.mingpt.GPT
      params: {{vocab_size: {V}, block_size: 16, n_layer: 2, n_head: {n_head}, n_embd: 32}}
    first_stage_config:
      target: taming.models.vqgan.VQModel
      params:
        embed_dim: 8
        n_embed: {V}
        ddconfig: {{double_z: false, z_channels: 16, resolution: 16, in_channels: 3, out_ch: 3,
                   ch: 16, ch_mult: {list(ch_mult)}, num_res_blocks: 1, attn_resolutions: [4],
                   dropout: 0.0}}
        lossconfig: {{target: taming.modules.losses.DummyLoss}}
    cond_stage_config:
      target: {cond}
      params: {{n_classes: 1000}}
''')


def test_the_release_project_yaml_is_checked_against_the_settings(tmp_path, monkeypatch):
    release = tmp_path / '2021-04-03T19-39-50_cin_transformer'
    path = release / 'checkpoints' / 'last.ckpt'
    path.parent.mkdir(parents=True)
    src = make_policy()
    _lightning_ckpt(path, _net2net_state(src), monkeypatch)
    _project_yaml(release)
    dst = make_policy(checkpoint=str(path))                     # matches: loads
    assert torch.equal(dst.transformer.head.weight, src.transformer.head.weight)
    _project_yaml(release, n_head=8)
    with pytest.raises(ValueError, match=r'transformer n_head: file 8 vs config 4; set arch'):
        make_policy(checkpoint=str(path))
    _project_yaml(release, ch_mult=(1, 1, 2))
    with pytest.raises(ValueError, match=r'tokenizer ch_mult: file \(1, 1, 2\) vs config '
                                         r'\(1, 2, 2\)'):
        make_policy(checkpoint=str(path))
    _project_yaml(release, cond='taming.modules.util.SOSProvider')
    with pytest.raises(ValueError, match='not the class-label Labelator'):
        make_policy(checkpoint=str(path))


@pytest.mark.parametrize('edit,match', [
    (lambda s: s.pop('transformer.blocks.1.attn.value.bias'),
     r'missing keys \(1\): blocks\.1\.attn\.value\.bias; check arch'),
    (lambda s: s.__setitem__('transformer.blocks.0.attn.rel_bias', torch.zeros(4)),
     r'unexpected keys \(1\): blocks\.0\.attn\.rel_bias'),
    (lambda s: s.__setitem__('transformer.pos_emb', torch.zeros(1, 20, 32)),
     r'pos_emb file \(1, 20, 32\) vs model \(1, 16, 32\)'),
    (lambda s: s.__setitem__('first_stage_model.quantize.embedding.weight', torch.zeros(32, 8)),
     r'quantize\.embedding\.weight file \(32, 8\) vs model \(64, 8\).*n_embed'),
    (lambda s: s.__setitem__('permuter.idx', torch.zeros(16)),
     r'unexpected keys \(1\): permuter\.idx'),
    (lambda s: s.__setitem__('transformer.blocks.0.attn.mask', torch.ones(1, 1, 16, 16)),
     r'blocks\.0\.attn\.mask is not a plain causal mask.*n_unmasked'),
])
def test_mismatched_official_files_raise_one_line_naming_the_key(tmp_path, edit, match):
    state = _net2net_state(make_policy())
    edit(state)
    torch.save({'state_dict': state}, tmp_path / 'last.ckpt')
    with pytest.raises(StateDictMismatch, match=match) as err:
        make_policy(checkpoint=str(tmp_path / 'last.ckpt'))
    assert '\n' not in str(err.value)


def test_a_file_with_code_is_refused(tmp_path):
    from crafted_files import reduce_payload
    marker = tmp_path / 'pwned'
    (tmp_path / 'last.ckpt').write_bytes(reduce_payload(str(marker)))
    with pytest.raises(CheckpointRefused, match='refused'):
        make_policy(checkpoint=str(tmp_path / 'last.ckpt'))
    assert not marker.exists()
    payload = pickle.dumps({'state_dict': {}, 'x': types.SimpleNamespace}, protocol=2)
    from crafted_files import torch_zip
    (tmp_path / 'ns.ckpt').write_bytes(torch_zip(payload))
    with pytest.raises(CheckpointRefused, match='SimpleNamespace'):
        make_policy(checkpoint=str(tmp_path / 'ns.ckpt'))


def test_missing_official_files_name_where_they_are_published(tmp_path):
    path = tmp_path / '2021-04-03T19-39-50_cin_transformer' / 'checkpoints' / 'last.ckpt'
    with pytest.raises(FileNotFoundError, match=r'last\.ckpt.*https://k00\.fr/s511rwcv'):
        make_policy(checkpoint=str(path))
    with pytest.raises(FileNotFoundError, match='a7530b09fed84f80a887'):
        make_policy(tokenizer_checkpoint=str(tmp_path / 'vqgan_imagenet_f16_16384' / 'last.ckpt'))
    with pytest.raises(FileNotFoundError, match='release folder name'):
        make_policy(checkpoint=str(tmp_path / 'model.ckpt'))


# ---- configs ------------------------------------------------------------------------------------

def test_cin_config_fails_at_start_naming_the_file():
    from mmengine.config import Config
    cfg = Config.fromfile(os.path.join(ROOT, 'configs/_base_/policies/vqgan-cin_c2i_256.py'))
    assert cfg.sampler.cfg_scale == 1.0
    with torch.device('meta'):
        with pytest.raises(FileNotFoundError, match=r'cin_transformer/checkpoints/last\.ckpt'
                                                    r'.*https://k00\.fr/s511rwcv'):
            POLICIES.build(cfg.policy)


def test_tiny_config_runs_one_grpo_iteration(tmp_path):
    from vargo.core.runner import build_runner, load_config, prepare_config
    child = tmp_path / 'vqgan_tiny_grpo.py'
    tiny = load_config(os.path.join(ROOT, 'configs/_base_/policies/vqgan-tiny_c2i.py'))
    child.write_text(
        f"_base_ = ['{ROOT}/configs/grpo/llamagen-tiny_grpo_jpeg.py']\n"
        f"policy = dict(_delete_=True, **{dict(tiny.policy)!r})\n"
        f"sampler = {dict(tiny.sampler)!r}\n"
        "group_size = 2\n"
        "train_cfg = dict(max_iters=1, samples_per_rank=4, minibatch_samples=None)\n"
        "default_hooks = dict(checkpoint=dict(interval=1))\n")
    cfg = prepare_config(load_config(str(child)), config_path=str(child), work_dir=str(tmp_path))
    cfg.experiment_name = f'test_vqgan_tiny_{id(cfg)}'
    runner = build_runner(cfg)
    runner.train()
    assert runner.iter == 1 and (tmp_path / 'iter_1.pth').exists()
    assert runner.message_hub.log_scalars['train/policy/logp_mismatch_max'].current() < 1e-4


def test_the_family_imports_no_other_family_and_no_sampler():
    from test_layout import POLICIES as POLICY_DIR
    from test_layout import _families, _imports, _py_files
    others = [f for f in _families() if f != 'vqgan']
    assert 'vqgan' in _families() and {'llamagen', 'var', 'mar'} <= set(others)
    bad = [(p, m) for p in _py_files(os.path.join(POLICY_DIR, 'vqgan')) for m in _imports(p)
           if m.startswith('vargo.components.samplers')
           or any(m == f'vargo.components.policies.{o}'
                  or m.startswith(f'vargo.components.policies.{o}.') for o in others)]
    assert not bad, bad
