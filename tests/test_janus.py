"""The Janus-Pro family (components/policies/janus) on a tiny Janus built from a JanusConfig:
parity with transformers' own image ``generate`` (tokens and CFG-mixed next-token
distributions), log-prob consistency, the official unconditional prompt, frozen parts, strict
local loading and its errors."""
import json
import os

import pytest
import torch

from conftest import ROOT
from vargo.components.modules.categorical import cfg_mix
from vargo.components.policies.janus import FROZEN_PARTS, JanusPolicy, check_local_dir
from vargo.components.samplers.ar_sampler import ARSampler
from vargo.core.checkpoint import StateDictMismatch
from vargo.core.rng import BatchRNG
from vargo.core.types import Conditions, LogprobSpec

#: a tiny Janus: 2-layer language model of width 32, 4 x 4 image tokens over a 64-code VQ (32 px)
TINY_ARCH = dict(
    text=dict(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256),
    vision=dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                patch_size=8, mlp_ratio=2.0),
    vq=dict(num_embeddings=64, base_channels=32, channel_multiplier=[1, 1, 2, 2],
            num_res_blocks=1, latent_channels=16))
WORDS = ['a', 'two', 'and', 'red', 'blue', 'circle', 'square', 'circles', 'squares']
#: prompts of different token lengths (the batch is left-padded)
PROMPTS = ['a red circle', 'two blue squares and a red circle']


@pytest.fixture(scope='module')
def policy():
    torch.manual_seed(0)
    return JanusPolicy(arch=TINY_ARCH, tokenizer=dict(vocabulary=WORDS))


def _generation_config(pol, cfg_scale, temperature):
    from transformers import GenerationConfig
    return GenerationConfig(do_sample=True, guidance_scale=cfg_scale, temperature=temperature,
                            top_k=0, top_p=1.0, bos_token_id=pol.special.bos,
                            pad_token_id=pol.special.pad,
                            generation_kwargs={'boi_token_id': pol.special.boi})


@pytest.mark.parametrize('prompts,cfg_scale,temperature', [
    (['a red circle'], 5.0, 1.0),          # the official settings, one prompt
    (PROMPTS, 3.0, 0.9),                   # padded batch, temperature
])
def test_rollout_tokens_equal_transformers_generate(policy, prompts, cfg_scale, temperature):
    g = 3
    sampler = ARSampler(cfg_scale=cfg_scale, temperature=temperature, top_k=0, top_p=1.0,
                        logprob_cfg='none', decode_images=False)
    torch.manual_seed(7)
    ours = sampler.rollout(policy, Conditions(prompts=prompts), group_size=g, rng=None)
    ids, mask = policy.prompt_ids([p for p in prompts for _ in range(g)])
    torch.manual_seed(7)
    theirs = policy.janus.generate(input_ids=ids, attention_mask=mask, generation_mode='image',
                                   generation_config=_generation_config(policy, cfg_scale,
                                                                        temperature))
    assert theirs.shape == ours.actions.shape == (len(prompts) * g, 16)
    assert torch.equal(theirs, ours.actions)


def test_cfg_mixed_distributions_equal_transformers(policy, monkeypatch):
    """Every step's CFG-mixed, tempered next-token distribution: vargo's (the logits its
    protocol returns, mixed as ARSampler mixes them) against transformers' (the scores its
    generate loop computes, through its own CFG processor and temperature warper)."""
    from transformers import LogitsProcessor, LogitsProcessorList
    from transformers.generation.logits_process import (ClassifierFreeGuidanceLogitsProcessor,
                                                        TemperatureLogitsWarper)
    w, temp = 4.0, 0.8
    ours, theirs = [], []
    prefill, decode_step = policy.prefill, policy.decode_step
    monkeypatch.setattr(policy, 'prefill',
                        lambda *a, **k: ours.append(prefill(*a, **k)[:, -1]) or ours[-1][:, None])
    monkeypatch.setattr(policy, 'decode_step',
                        lambda *a, **k: ours.append(decode_step(*a, **k)) or ours[-1])

    class Record(LogitsProcessor):
        def __call__(self, input_ids, scores):
            theirs.append(scores.clone())
            return scores

    sampler = ARSampler(cfg_scale=w, temperature=temp, top_k=0, top_p=1.0, logprob_cfg='rollout',
                        decode_images=False)
    torch.manual_seed(11)
    rollout = sampler.rollout(policy, Conditions(prompts=PROMPTS), group_size=2, rng=None)
    monkeypatch.undo()
    ids, mask = policy.prompt_ids([p for p in PROMPTS for _ in range(2)])
    torch.manual_seed(11)
    tokens = policy.janus.generate(input_ids=ids, attention_mask=mask, generation_mode='image',
                                   generation_config=_generation_config(policy, w, temp),
                                   logits_processor=LogitsProcessorList([Record()]))
    assert torch.equal(tokens, rollout.actions)
    assert len(ours) == len(theirs) == 16
    b = ids.shape[0]
    cfg_proc, temp_proc = ClassifierFreeGuidanceLogitsProcessor(w), TemperatureLogitsWarper(temp)
    worst = 0.0
    lp_ours = []
    for step, (mine, raw) in enumerate(zip(ours, theirs)):
        assert mine.shape == raw.shape == (2 * b, 64)
        p_ours = torch.softmax(cfg_mix(mine[:b], mine[b:], w) / temp, dim=-1)
        p_theirs = torch.softmax(temp_proc(ids, cfg_proc(ids, raw.float())), dim=-1)
        worst = max(worst, float((p_ours - p_theirs).abs().max()))
        lp_ours.append(p_ours.gather(1, rollout.actions[:, step:step + 1]).log()[:, 0])
    assert worst < 1e-6, worst
    # the sampler recorded exactly the log-probs of that distribution, and evaluate agrees
    lp_ours = torch.stack(lp_ours, dim=1)
    assert torch.allclose(rollout.logp_old, lp_ours, atol=1e-5)
    pe = policy.evaluate(rollout, spec=sampler.logprob_spec())
    assert torch.allclose(pe.logp, rollout.logp_old, atol=1e-5)


@pytest.mark.parametrize('logprob_cfg', ['none', 'rollout'])
def test_logp_old_equals_evaluate_with_noise_source(policy, logprob_cfg):
    sampler = ARSampler(cfg_scale=5.0, temperature=1.0, top_k=0, top_p=1.0,
                        logprob_cfg=logprob_cfg)
    rollout = sampler.rollout(policy, Conditions(prompts=PROMPTS), group_size=2,
                              rng=BatchRNG(0, 0, 4))
    pe = policy.evaluate(rollout, spec=sampler.logprob_spec())
    assert pe.logp.shape == pe.entropy.shape == (4, 16)
    assert float((pe.logp - rollout.logp_old).detach().abs().max()) < 1e-5
    assert bool((pe.entropy >= 0).all()) and bool((pe.entropy <= torch.log(torch.tensor(64.))
                                                   + 1e-5).all())
    if logprob_cfg == 'none':   # STAGE's score: the conditional log_softmax of the head
        ids, mask = policy.prompt_ids(rollout.cond.prompts)
        x = torch.cat([policy.lm.embed_tokens(ids),
                       policy.image_embeddings(rollout.actions[:, :-1])], dim=1)
        h = policy.lm(inputs_embeds=x, attention_mask=torch.cat(
            [mask, mask.new_ones(4, 15)], dim=1)).last_hidden_state[:, ids.shape[1] - 1:]
        ref = torch.log_softmax(policy.janus.model.generation_head(h), -1)
        ref = ref.gather(2, rollout.actions[..., None])[..., 0]
        assert torch.allclose(pe.logp, ref, atol=1e-5)
    images = rollout.images
    assert images.shape == (4, 3, 32, 32) and float(images.min()) >= 0 and float(images.max()) <= 1


def test_prefix_completion_keeps_tokens_and_scores_them(policy):
    sampler = ARSampler(cfg_scale=2.0, temperature=1.0, top_k=0, top_p=1.0, logprob_cfg='rollout',
                        decode_images=False)
    first = sampler.rollout(policy, Conditions(prompts=PROMPTS), group_size=1,
                            rng=BatchRNG(1, 0, 2))
    done = sampler.rollout(policy, first.cond, group_size=2, prefix=first, stop_at_step=5,
                           rng=BatchRNG(1, 1, 4))
    assert torch.equal(done.actions[:, :5], first.actions.repeat_interleave(2, 0)[:, :5])
    assert not bool(done.action_mask[:, :5].any()) and bool(done.action_mask[:, 5:].all())
    pe = policy.evaluate(done, spec=sampler.logprob_spec())
    assert float((pe.logp - done.logp_old).detach().abs().max()) < 1e-5


def test_prompt_and_official_unconditional_prompt(policy):
    assert policy.format_prompt(' a red circle ') == '<|User|>: a red circle\n\n<|Assistant|>:'
    ids, mask = policy.prompt_ids(PROMPTS)
    sp = policy.special
    n = mask.sum(1)
    assert ids[0, -1] == ids[1, -1] == sp.boi
    assert ids[0, -int(n[0])] == sp.bos and ids[1, 0] == sp.bos and int(n[1]) == ids.shape[1]
    assert bool((ids[0, :-int(n[0])] == sp.pad).all()) and not bool(mask[0, :-int(n[0])].any())
    null = policy.null_prompt_ids(ids, mask)
    for i in range(2):        # official: tokens[i, 1:-1] = pad_id on the unpadded row
        row = ids[i, -int(n[i]):].clone()
        row[1:-1] = sp.pad
        assert torch.equal(null[i, -int(n[i]):], row)
    # transformers' construction (every token but BOS and BOI becomes pad) gives the same rows
    theirs = ids.masked_fill((ids != sp.bos) & (ids != sp.boi), sp.pad)
    assert torch.equal(null, theirs)


def test_only_the_language_model_trains_and_is_saved(policy):
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith('janus.model.language_model.') for n in trainable)
    assert {id(p) for p in policy.trainable_parameters()} == {
        id(p) for p in policy.lm.parameters()}
    for name in FROZEN_PARTS:
        assert not any(p.requires_grad for p in getattr(policy.janus.model, name).parameters())
    sd = policy.state_dict()
    assert set(sd) == {f'janus.model.language_model.{k}' for k in policy.lm.state_dict()}
    policy.load_state_dict(sd)              # a state dict without the frozen parts loads
    policy.train()
    assert all(not getattr(policy.janus.model, n).training for n in FROZEN_PARTS)
    assert policy.lm.training


def test_embed_actions_are_normalised_codebook_vectors(policy):
    sampler = ARSampler(cfg_scale=1.0, temperature=1.0, top_k=0, top_p=1.0, logprob_cfg='none',
                        decode_images=False)
    rollout = sampler.rollout(policy, Conditions(prompts=PROMPTS[:1]), group_size=2,
                              rng=BatchRNG(2, 0, 2))
    q = policy.embed_actions(rollout)
    codes = policy.janus.model.vqmodel.quantize.embedding.weight
    assert q.shape == (2, 16, 8)
    assert torch.allclose(q, torch.nn.functional.normalize(codes[rollout.actions], dim=-1))
    assert torch.allclose(q.norm(dim=-1), torch.ones(2, 16))


def test_image_tokenizer_quantises_as_the_official_janus_vq_and_decodes_as_transformers(policy):
    """The official Janus VQ (LlamaGen's, codebook_l2_norm) takes the code nearest to the
    L2-normalised encoder output among the L2-normalised codes; decoding is transformers' own."""
    import torch.nn.functional as F
    tok = policy.image_tokenizer
    vq = policy.janus.model.vqmodel
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    ids = tok.encode(images)
    assert ids.shape == (3, 16)
    with torch.no_grad():
        h = vq.quant_conv(vq.encoder(images * 2 - 1)).permute(0, 2, 3, 1).reshape(3, 16, -1)
        z = F.normalize(h, dim=-1)
        e = F.normalize(vq.quantize.embedding.weight, dim=-1)
        euclid = torch.cdist(z, e.expand(3, -1, -1)).argmin(dim=-1)        # on the unit sphere
        assert torch.equal(ids, euclid)
        assert torch.equal(tok.decode(ids), ((vq.decode(ids) + 1) / 2).clamp(0, 1))
        # decode_latent of the code vectors is what decode computes (up to the conv layout)
        assert torch.allclose(tok.decode_latent(e[ids]), vq.decode(ids), atol=1e-5)


def test_pretrain_loss_is_the_teacher_forced_cross_entropy_with_prompt_dropout(policy):
    sampler = ARSampler(cfg_scale=1.0, temperature=1.0, top_k=0, top_p=1.0, logprob_cfg='none',
                        decode_images=False)
    rollout = sampler.rollout(policy, Conditions(prompts=PROMPTS), group_size=1,
                              rng=BatchRNG(3, 0, 2))
    with torch.no_grad():
        loss = policy.pretrain_loss(rollout.actions, rollout.cond, null_prob=0.0)
        pe = policy.evaluate(rollout, spec=sampler.logprob_spec(), with_entropy=False)
        assert torch.allclose(loss, -pe.logp.mean(), atol=1e-6)
        # every prompt dropped: the loss is the one of the unconditional (pad) prompt, which is
        # the same for two prompts of one token length
        same_len = ['a red circle', 'a blue square']
        a = policy.pretrain_loss(rollout.actions[:1], Conditions(prompts=same_len[:1]),
                                 null_prob=1.0)
        b = policy.pretrain_loss(rollout.actions[:1], Conditions(prompts=same_len[1:]),
                                 null_prob=1.0)
        c = policy.pretrain_loss(rollout.actions[:1], Conditions(prompts=same_len[1:]),
                                 null_prob=0.0)
        assert torch.equal(a, b) and not torch.equal(b, c)
        # the draw follows the generator
        g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
        assert torch.equal(policy.pretrain_loss(rollout.actions, rollout.cond, null_prob=0.5,
                                                generator=g1),
                           policy.pretrain_loss(rollout.actions, rollout.cond, null_prob=0.5,
                                                generator=g2))


@pytest.fixture(scope='module')
def saved_dir(policy, tmp_path_factory):
    path = tmp_path_factory.mktemp('janus') / 'Janus-Pro-1B'
    policy.janus.save_pretrained(path)
    policy.tokenizer.tokenizer.save_pretrained(path)
    return path


def test_loads_a_local_directory_strictly(policy, saved_dir):
    loaded = JanusPolicy(model_path=str(saved_dir))
    assert loaded.special == policy.special
    for (k, a), (_, b) in zip(sorted(policy.janus.state_dict().items()),
                              sorted(loaded.janus.state_dict().items())):
        assert torch.equal(a, b), k
    r1 = ARSampler(cfg_scale=5.0, temperature=1.0, top_k=0, top_p=1.0, logprob_cfg='none',
                   decode_images=False)
    a = r1.rollout(policy, Conditions(prompts=PROMPTS), group_size=1, rng=BatchRNG(3, 0, 2))
    r1.release_cache()
    b = r1.rollout(loaded, Conditions(prompts=PROMPTS), group_size=1, rng=BatchRNG(3, 0, 2))
    assert torch.equal(a.actions, b.actions)


def test_loading_errors_name_the_file_and_where_janus_is_published(saved_dir, tmp_path):
    import shutil
    with pytest.raises(FileNotFoundError, match=r'deepseek-community/Janus-Pro-7B') as err:
        JanusPolicy(model_path=str(tmp_path / 'Janus-Pro-7B'))
    assert '\n' not in str(err.value)
    broken = tmp_path / 'broken'
    shutil.copytree(saved_dir, broken)
    os.remove(broken / 'tokenizer.json')
    with pytest.raises(FileNotFoundError, match=r'tokenizer\.json not found.*deepseek-community'):
        check_local_dir(str(broken))
    shutil.copy(saved_dir / 'tokenizer.json', broken / 'tokenizer.json')
    os.rename(broken / 'model.safetensors', broken / 'shard-1.safetensors')
    with open(broken / 'model.safetensors.index.json', 'w') as f:
        json.dump({'weight_map': {'a': 'shard-1.safetensors', 'b': 'shard-2.safetensors'}}, f)
    with pytest.raises(FileNotFoundError, match=r'shard-2\.safetensors not found'):
        check_local_dir(str(broken))
    os.remove(broken / 'model.safetensors.index.json')
    # a weight file that lacks a tensor is refused, naming it
    from safetensors.torch import load_file, save_file
    tensors = load_file(str(broken / 'shard-1.safetensors'))
    os.remove(broken / 'shard-1.safetensors')
    key = next(k for k in tensors if 'generation_head' in k)
    save_file({k: v for k, v in tensors.items() if k != key}, str(broken / 'model.safetensors'),
              metadata={'format': 'pt'})
    with pytest.raises(StateDictMismatch, match='generation_head'):
        JanusPolicy(model_path=str(broken))
    # the original DeepSeek release (custom code) is named as such
    with open(broken / 'config.json') as f:
        config = json.load(f)
    config['model_type'] = 'multi_modality'
    with open(broken / 'config.json', 'w') as f:
        json.dump(config, f)
    with pytest.raises(ValueError, match='original DeepSeek release.*deepseek-community'):
        check_local_dir(str(broken))


def test_bad_settings_fail_with_one_line():
    with pytest.raises(ValueError, match='model_path'):
        JanusPolicy()
    with pytest.raises(ValueError, match='either model_path'):
        JanusPolicy(model_path='x', arch=TINY_ARCH)
    with pytest.raises(ValueError, match="dtype='fp8'"):
        JanusPolicy(arch=TINY_ARCH, tokenizer=dict(vocabulary=WORDS), dtype='fp8')
    with pytest.raises(ValueError, match='vocab_size'):
        JanusPolicy(arch=dict(TINY_ARCH, text=dict(TINY_ARCH['text'], vocab_size=12)),
                    tokenizer=dict(vocabulary=WORDS))


def test_special_tokens_fall_back_to_the_official_pad_tag():
    from vargo.components.policies.janus import JanusSpecialTokens, word_level_tokenizer
    from vargo.components.policies.janus.model import OFFICIAL_PAD_TOKEN
    tok = word_level_tokenizer(WORDS)
    tok.pad_token = None
    with pytest.raises(ValueError, match='no pad_token'):
        JanusSpecialTokens.of(tok, '<begin_of_image>')
    tok.add_special_tokens({'additional_special_tokens': [OFFICIAL_PAD_TOKEN]})
    sp = JanusSpecialTokens.of(tok, '<begin_of_image>')
    assert sp.pad == tok.convert_tokens_to_ids(OFFICIAL_PAD_TOKEN) and sp.bos == tok.bos_token_id
    with pytest.raises(ValueError, match="image-start token '<boi>'"):
        JanusSpecialTokens.of(tok, '<boi>')


def test_flops_per_sample_counts_every_matmul_of_evaluate(policy):
    """Against torch's FlopCounterMode (which sees the matmuls but not the CPU attention
    kernel): equal once the causal attention term is taken out, with and without CFG."""
    from torch.utils.flop_counter import FlopCounterMode
    sampler = ARSampler(cfg_scale=3.0, temperature=1.0, top_k=0, top_p=1.0,
                        logprob_cfg='rollout', decode_images=False)
    rollout = sampler.rollout(policy, Conditions(prompts=PROMPTS), group_size=1,
                              rng=BatchRNG(4, 0, 2))
    c = policy.janus.config.text_config
    s = policy.prompt_ids(PROMPTS)[0].shape[1] + 16 - 1
    attention = c.num_hidden_layers * 2 * c.hidden_size * s * (s + 1)
    for spec, g in ((LogprobSpec(), 1), (sampler.logprob_spec(), 2)):
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            policy.evaluate(rollout, spec=spec, with_entropy=False)
        per_sample = policy.flops_per_sample(spec, rollout=rollout)
        assert counter.get_total_flops() == 2 * (per_sample - g * attention)
    assert policy.flops_per_sample(LogprobSpec()) < per_sample    # no rollout: L = 1


def test_activation_checkpointing_and_bf16(policy):
    """Activation checkpointing gives the same gradients; a bf16 policy samples and scores
    consistently (logits are fp32)."""
    torch.manual_seed(0)
    ckpt = JanusPolicy(arch=TINY_ARCH, tokenizer=dict(vocabulary=WORDS),
                       gradient_checkpointing=True)
    ckpt.load_state_dict(policy.state_dict())
    sampler = ARSampler(cfg_scale=3.0, temperature=1.0, top_k=0, top_p=1.0, logprob_cfg='none',
                        decode_images=False)
    rollout = sampler.rollout(policy, Conditions(prompts=PROMPTS), group_size=2,
                              rng=BatchRNG(5, 0, 4))
    grads = []
    for p in (policy, ckpt):
        p.train()
        p.zero_grad()
        pe = p.evaluate(rollout, spec=sampler.logprob_spec())
        (pe.logp.mean() + 0.1 * pe.entropy.mean()).backward()
        grads.append([q.grad.clone() for q in p.trainable_parameters()])
        p.zero_grad()
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads))
    half = JanusPolicy(arch=TINY_ARCH, tokenizer=dict(vocabulary=WORDS), dtype='bfloat16')
    assert half.lm.embed_tokens.weight.dtype == torch.bfloat16
    sampler.release_cache()
    rollout = sampler.rollout(half, Conditions(prompts=PROMPTS), group_size=2,
                              rng=BatchRNG(5, 0, 4))
    pe = half.evaluate(rollout, spec=sampler.logprob_spec())
    assert pe.logp.dtype == torch.float32
    assert float((pe.logp - rollout.logp_old).detach().abs().max()) < 1e-2


def test_shipped_shapes_janus_vq_loads_strictly_and_reconstructs():
    """components/benchmarks/weights/janus_vq_shapes.safetensors through the Shapes Janus config."""
    from mmengine import Config
    from vargo.components.datasets.shapes import ShapesImageDataset
    from vargo.components.rewards.shapes_eval import score_images
    cfg = dict(Config.fromfile(os.path.join(ROOT, 'configs/_base_/policies/janus_shapes_t2i.py'))
               .policy)
    cfg.pop('type')
    cfg['checkpoint'] = None
    cfg['tokenizer_checkpoint'] = os.path.join(ROOT, cfg['tokenizer_checkpoint'])
    pol = JanusPolicy(**cfg)
    ds = ShapesImageDataset(split='eval', task='c2i', num_samples=16, seed=200)
    items = [ds[i] for i in range(16)]
    real = torch.stack([it['image'] for it in items])
    rec = pol.image_tokenizer.decode(pol.image_tokenizer.encode(real))
    assert float((rec - real).abs().mean()) < 0.03
    assert float(score_images(rec, [it['class_id'] for it in items]).strict.float().mean()) >= 0.9
