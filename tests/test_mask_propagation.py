"""MP (mask propagation, docs/methods/var_rl.md section 3): propagation of a hand-built mask over
next-scale and raster grids, background and renormalisation by hand, empty masks, composition
with PANW; ShapesEval regions; the saliency source on a tiny VARPolicy."""
import numpy as np
import pytest
import torch

from vargo.components.datasets.shapes import (
    PALETTE, parse_prompt, render, sample_layout, shape_mask)
from vargo.components.rewards import ColourMassReward, ShapesEvalReward
from vargo.components.token_selectors import MaskPropagationSelector, ScaleAreaReweightSelector
from vargo.components.token_selectors.mask_propagation import propagate_mask
from vargo.core.registry import TOKEN_SELECTORS, ConfigError
from vargo.core.types import Advantages, Conditions, PolicyEval, RewardOutput, Rollout

SCALES = (1, 2, 3, 4, 8, 16)


def scale_axes(scales=SCALES):
    steps, pos = [], []
    for s, p in enumerate(scales):
        r, c = torch.meshgrid(torch.arange(p), torch.arange(p), indexing='ij')
        steps.append(torch.full((p * p,), s))
        pos.append(torch.stack([torch.full((p * p,), s), r.flatten(), c.flatten()], -1))
    return torch.cat(steps), torch.cat(pos)


def rollout_of(step, pos, b, mask=None, images=None, actions=None):
    a = step.shape[0]
    mask = torch.ones(b, a, dtype=torch.bool) if mask is None else mask
    acts = torch.zeros(b, a, dtype=torch.long) if actions is None else actions
    return Rollout(Conditions(class_ids=torch.tensor([3, 7, 1, 0][:b])), torch.arange(b), acts,
                   torch.zeros(b, a), mask, step, pos, images=images)


def adv_with(regions, b):
    return Advantages({'r': torch.zeros(b, 1)}, {'r': 1.0},
                      rewards={'eval': RewardOutput(torch.zeros(b), regions=regions)})


def block_mask():
    m = torch.zeros(16, 16)
    m[4:8, 8:12] = 1.0                                          # one 4x4 block
    return m


# cells of each scale in the mask of block_mask(), by hand from adaptive max-pool's bins
# [floor(i H / h), ceil((i + 1) H / h)): e.g. 3x3 bins are pixels 0-5, 5-10, 10-15
EXPECTED = {1: {(0, 0)}, 2: {(0, 1)}, 3: {(0, 1), (0, 2), (1, 1), (1, 2)}, 4: {(1, 2)},
            8: {(2, 4), (2, 5), (3, 4), (3, 5)},
            16: {(r, c) for r in range(4, 8) for c in range(8, 12)}}


def select(sel, r, adv, policy=None):
    return sel(r, PolicyEval(torch.zeros(r.batch_size, r.num_actions)), None, adv,
               policy=policy, group_size=r.batch_size)


def test_propagation_of_a_block_to_every_scale():
    step, pos = scale_axes()
    got = propagate_mask(block_mask()[None], pos)[0]
    for s, p in enumerate(SCALES):
        cells = {tuple(x) for x in pos[(step == s) & got][:, 1:].tolist()}
        assert cells == EXPECTED[p], p
    assert int(got.sum()) == 27


@pytest.mark.parametrize('renormalize', ['none', 'per_sample', 'per_step'])
def test_weights_background_and_renormalisation_by_hand(renormalize):
    step, pos = scale_axes()
    r = rollout_of(step, pos, 1)
    sel = MaskPropagationSelector(head='eval', background=0.05, renormalize=renormalize)
    tw = select(sel, r, adv_with(block_mask()[None], 1))
    w = tw.pg[0]
    inside = propagate_mask(block_mask()[None], pos)[0]
    if renormalize == 'none':
        want_in, want_out = {s: 1.0 for s in range(6)}, {s: 0.05 for s in range(6)}
    elif renormalize == 'per_sample':
        z = 350 / (27 + 0.05 * 323)                             # 350 tokens, 27 inside
        want_in, want_out = {s: z for s in range(6)}, {s: 0.05 * z for s in range(6)}
    else:
        want_in, want_out = {}, {}
        for s, p in enumerate(SCALES):
            k, n = len(EXPECTED[p]), p * p
            want_in[s], want_out[s] = n / (k + 0.05 * (n - k)), 0.05 * n / (k + 0.05 * (n - k))
    for s in range(6):
        sel_in, sel_out = (step == s) & inside, (step == s) & ~inside
        assert torch.allclose(w[sel_in], torch.tensor(want_in[s]), rtol=1e-5)
        if sel_out.any():
            assert torch.allclose(w[sel_out], torch.tensor(want_out[s]), rtol=1e-5)
        if renormalize == 'per_step':                           # each scale keeps its total
            assert w[step == s].sum().item() == pytest.approx(SCALES[s] ** 2, rel=1e-5)
    if renormalize == 'per_sample':
        assert w.mean().item() == pytest.approx(1.0, rel=1e-5)
    assert torch.equal(tw.kl, torch.ones(1, 350))                # policy term only by default
    assert tw.metrics['mask_propagation/mask_fraction'] == pytest.approx(27 / 350)
    assert tw.metrics['mask_propagation/empty_fraction'] == 0.0


def test_empty_mask_none_regions_inactive_actions_and_kl():
    step, pos = scale_axes()
    regions = torch.stack([block_mask(), torch.zeros(16, 16)])   # sample 1: empty mask
    active = torch.ones(2, 350, dtype=torch.bool)
    active[:, :5] = False                                        # scales 1x1, 2x2 given
    r = rollout_of(step, pos, 2, mask=active)
    sel = MaskPropagationSelector(head='eval', background=0.0, kl=True)
    tw = select(sel, r, adv_with(regions, 2))
    assert torch.equal(tw.pg[1], active[1].float())             # empty: 1 everywhere
    assert torch.equal(tw.pg[:, :5], torch.zeros(2, 5))
    inside = propagate_mask(block_mask()[None], pos)[0] & active[0]
    assert torch.allclose(tw.pg[0][inside], torch.tensor(345 / 25))   # 25 active inside
    assert torch.equal(tw.pg[0][~inside], torch.zeros(int((~inside).sum())))
    assert torch.equal(tw.kl, tw.pg)
    assert tw.metrics['mask_propagation/empty_fraction'] == 0.5
    none = select(sel, r, adv_with(None, 2))                     # head gave no regions
    assert torch.equal(none.pg, active.float())
    assert none.metrics['mask_propagation/empty_fraction'] == 1.0


def test_raster_grid_and_per_step_refused_there():
    r_, c_ = torch.meshgrid(torch.arange(4), torch.arange(4), indexing='ij')
    pos = torch.stack([r_.flatten(), c_.flatten()], -1)         # [16, 2] (row, col)
    r = rollout_of(torch.arange(16), pos, 1)
    tw = select(MaskPropagationSelector(head='eval', background=0.1, renormalize='none'), r,
                adv_with(block_mask()[None], 1))
    want = torch.full((4, 4), 0.1)
    want[1, 2] = 1.0                                            # pixels 4-7 x 8-11 of 16
    assert torch.allclose(tw.pg[0], want.flatten())
    with pytest.raises(ValueError, match="per_sample"):
        select(MaskPropagationSelector(head='eval', renormalize='per_step'), r,
               adv_with(block_mask()[None], 1))


def test_composition_with_panw_keeps_each_scales_total():
    step, pos = scale_axes()
    r = rollout_of(step, pos, 1)
    adv = adv_with(block_mask()[None], 1)
    panw = select(ScaleAreaReweightSelector(alpha=0.7), r, adv)
    mp = select(MaskPropagationSelector(head='eval', renormalize='per_step'), r, adv)
    both = panw * mp
    assert torch.equal(both.pg, panw.pg * mp.pg)
    for s in range(6):
        assert both.pg[0, step == s].sum().item() == pytest.approx(
            panw.pg[0, step == s].sum().item(), rel=1e-5)
    assert 'mask_propagation/mask_fraction' in both.metrics


def test_build_errors_name_the_fix():
    with pytest.raises(ConfigError, match='head='):
        TOKEN_SELECTORS.build(dict(type='MaskPropagationSelector', source='regions'))
    with pytest.raises(ConfigError, match='saliency_reward'):
        TOKEN_SELECTORS.build(dict(type='MaskPropagationSelector', source='saliency'))
    with pytest.raises(ConfigError, match='differentiable_scores'):
        TOKEN_SELECTORS.build(dict(type='MaskPropagationSelector', source='saliency',
                                   saliency_reward=dict(type='ShapesEvalReward', task='c2i')))
    with pytest.raises(ConfigError, match='renormalize'):
        TOKEN_SELECTORS.build(dict(type='MaskPropagationSelector', head='x', renormalize='step'))
    sel = TOKEN_SELECTORS.build(dict(type='MaskPropagationSelector', source='saliency',
                                     saliency_reward=dict(type='ColourMassReward')))
    step, pos = scale_axes()
    with pytest.raises(ValueError, match='decode_with_step_inputs'):
        select(sel, rollout_of(step, pos, 1), adv_with(None, 1), policy=torch.nn.Linear(1, 1))
    with pytest.raises(ValueError, match="heads: \\['eval'\\]"):
        select(MaskPropagationSelector(head='shapes'), rollout_of(step, pos, 1),
               adv_with(None, 1))


# ---- ShapesEval regions ---------------------------------------------------------------------------
def _shapes_rollout(images, prompts):
    b = images.shape[0]
    return Rollout(Conditions(prompts=list(prompts)), torch.arange(b),
                   torch.zeros(b, 1, dtype=torch.long), torch.zeros(b, 1),
                   torch.ones(b, 1, dtype=torch.bool), torch.zeros(1, dtype=torch.long),
                   torch.zeros(1, 2, dtype=torch.long), images=images)


def _boxes_of_render(prompt, seed):
    out = np.zeros((32, 32), dtype=np.float32)
    for p in sample_layout(parse_prompt(prompt), np.random.default_rng(seed)):
        ys, xs = np.nonzero(shape_mask(p.shape, p.size))
        out[p.y + ys.min():p.y + ys.max() + 1, p.x + xs.min():p.x + xs.max() + 1] = 1.0
    return torch.from_numpy(out)


def test_shapes_regions_on_rendered_images():
    prompts = ['a red circle', 'three green triangles', 'a blue square below a yellow circle',
               'two cyan squares']
    images = torch.stack([render(parse_prompt(p), 10 + i) for i, p in enumerate(prompts)])
    plain = ShapesEvalReward(task='t2i')(_shapes_rollout(images, prompts))
    out = ShapesEvalReward(task='t2i', regions=True)(_shapes_rollout(images, prompts))
    assert plain.regions is None and torch.equal(out.scores, plain.scores)
    assert torch.equal(out.strict, plain.strict) and out.strict.all()
    assert out.regions.shape == (4, 32, 32) and out.regions.dtype == torch.float32
    for i, p in enumerate(prompts):                              # union of the objects' boxes
        assert torch.equal(out.regions[i], _boxes_of_render(p, 10 + i)), p
    # asked for more than is there (or another colour): the whole image
    wrong = ['a red square', 'three green triangles', 'a blue square below a yellow circle',
             'three cyan squares']
    w = ShapesEvalReward(task='t2i', regions=True)(_shapes_rollout(images, wrong))
    assert w.regions[0].eq(1).all() and w.regions[3].eq(1).all()
    assert torch.equal(w.regions[1:3], out.regions[1:3])
    assert w.metrics['region_fraction'] == pytest.approx(float(w.regions.mean()))


def test_shapes_regions_on_hand_made_images():
    img = torch.zeros(3, 3, 32, 32)
    red, green = torch.tensor(PALETTE[0]).view(3, 1, 1), torch.tensor(PALETTE[1]).view(3, 1, 1)
    img[0, :, 2:9, 3:10] = red                                   # a 7x7 red square
    img[0, :, 20:22, 25:26] = red                                  # a stray 2-px red blob
    img[0, :, 12:13, 12:16] = green                                # an L-shaped green stray
    img[0, :, 12:18, 12:13] = green
    img[1] = img[0]                                              # asks for a missing object
    # image 2 is black: the object clause finds nothing
    prompts = ['a red square', 'a red square left of a blue circle', 'a red square']
    out = ShapesEvalReward(task='t2i', regions=True)(_shapes_rollout(img, prompts))
    want = torch.zeros(32, 32)
    want[2:9, 3:10] = 1
    want[20:22, 25] = 1
    want[12:18, 12:16] = 1                                       # the L's bounding box
    assert torch.equal(out.regions[0], want)
    assert out.regions[1].eq(1).all() and out.regions[2].eq(1).all()
    plain = ShapesEvalReward(task='t2i')(_shapes_rollout(img, prompts))
    assert torch.equal(out.scores, plain.scores) and out.scores[0] == 1.0


def test_shapes_regions_drive_the_selector():
    prompts = ['a red circle', 'a red circle']
    images = torch.stack([render(parse_prompt(p), i) for i, p in enumerate(prompts)])
    out = ShapesEvalReward(task='t2i', regions=True)(_shapes_rollout(images, prompts))
    step, pos = scale_axes((1, 2, 4, 8))
    r = rollout_of(step, pos, 2)
    adv = Advantages({'r': torch.zeros(2, 1)}, {'r': 1.0}, rewards={'shapes': out})
    tw = select(MaskPropagationSelector(head='shapes', background=0.0, renormalize='none'),
                r, adv)
    assert torch.equal(tw.pg.bool(), propagate_mask(out.regions, pos))
    assert 0 < tw.metrics['mask_propagation/mask_fraction'] < 0.5


# ---- the saliency source on a tiny VAR ------------------------------------------------------------
def _tiny_var():
    from vargo.components.policies.var import VARPolicy
    torch.manual_seed(0)
    return VARPolicy(arch=dict(depth=1, embed_dim=32, num_heads=2, drop_path_rate=0.0),
                     patch_nums=(1, 2, 4, 8), num_classes=10, vocab_size=64,
                     tokenizer=dict(vocab_size=64, z_channels=8, ch=16, ch_mult=(1, 2, 2),
                                    num_res_blocks=1, norm_groups=4))


def test_decode_with_step_inputs_equals_decode_and_saliency_finds_the_quadrant():
    policy = _tiny_var()
    step, pos = policy.rollout_axes()
    torch.manual_seed(1)
    tokens = torch.randint(0, 64, (3, 85))
    r = rollout_of(step, pos, 3, actions=tokens)
    images, inputs = policy.decode_with_step_inputs(r)
    assert torch.equal(images, policy.decode(r))
    assert [tuple(e.shape) for e in inputs] == [(3, 8, p, p) for p in (1, 2, 4, 8)]
    assert all(e.is_leaf and e.requires_grad for e in inputs)
    assert not any(p.grad is not None for p in policy.parameters())

    # The random tiny decoder mixes the whole image (mid-block attention, GroupNorm statistics),
    # so its saliency is global by construction. Locality is checked with a local decoder (a
    # 1x1 conv and a nearest 4x upsampling; post_quant_conv and Phi are 3x3 convs).
    torch.manual_seed(2)
    policy.vae.decoder = torch.nn.Sequential(torch.nn.Conv2d(8, 3, 1),
                                             torch.nn.Upsample(scale_factor=4))
    images, _ = policy.decode_with_step_inputs(r)
    assert torch.equal(images, policy.decode(r))
    sel = MaskPropagationSelector(
        source='saliency', quantile=0.8, background=0.0, renormalize='none',
        saliency_reward=dict(type='ColourMassReward', colour='red', box=(0, 0, 0.5, 0.5)))
    tw = select(sel, r, adv_with(None, 3), policy=policy)
    assert not any(p.grad is not None for p in policy.parameters())
    in_mask = tw.pg.bool()
    for s, p in ((1, 2), (2, 4), (3, 8)):
        cells = pos[step == s][:, 1:]                           # [p^2, 2] (row, col)
        m = in_mask[:, step == s]                               # [B, p^2]
        quad = (cells < p // 2).all(-1)                         # the top-left quadrant's cells
        frac_in_quad = (m & quad).sum() / m.sum()
        assert frac_in_quad >= (1.0 if p == 2 else 0.75), (p, float(frac_in_quad))
    assert tw.metrics['mask_propagation/empty_fraction'] == 0.0
    # a reward of the whole image spreads the mask: cells outside the quadrant get in
    whole = MaskPropagationSelector(
        source='saliency', quantile=0.8, background=0.0, renormalize='none',
        saliency_reward=dict(type='ColourMassReward', colour='red'))
    fine = select(whole, r, adv_with(None, 3), policy=policy).pg.bool()[:, step == 3]
    quad8 = (pos[step == 3][:, 1:] < 4).all(-1)
    assert (fine & ~quad8).any()


def test_colour_mass_reward_head():
    img = torch.zeros(2, 3, 8, 8)
    img[0, 0] = 1.0                                             # all red
    head = ColourMassReward(colour='red', box=(0.5, 0.5, 1.0, 1.0))
    out = head(_shapes_rollout(img, ['a', 'b']))
    assert torch.allclose(out.scores, torch.tensor([1.0, float(np.exp(-1 / (2 * 0.25 ** 2)))]))
    with pytest.raises(ValueError, match='box'):
        ColourMassReward(box=(0.5, 0, 0.2, 1))


def test_docstring_examples():
    import doctest

    from vargo.components.rewards import differentiable
    from vargo.components.token_selectors import mask_propagation
    for mod in (mask_propagation, differentiable):
        assert doctest.testmod(mod).failed == 0, mod.__name__


def test_in_a_training_run_with_panw(tmp_path):
    """A toy run: MP reads the head's regions for its rows inside the loop, composed after PANW
    (on the toy's raster policy PANW is a no-op and MP uses 'per_sample')."""
    import os

    from conftest import ROOT
    from toy_components import RecordingSelector
    from vargo.core.runner import build_runner, load_config, prepare_config
    toy = os.path.join(ROOT, 'tests', 'configs', 'toy_grpo.py')
    cfg = load_config(toy, {
        'rewards': dict(_delete_=True, r=dict(type='ToyRegionReward')),
        'token_selectors': dict(_delete_=True,
                                panw=dict(type='ScaleAreaReweightSelector', alpha=0.7),
                                mp=dict(type='MaskPropagationSelector', head='r',
                                        background=0.1),
                                rec=dict(type='RecordingSelector')),
        'train_cfg.max_iters': 1, 'train_cfg.mu': 1, 'default_hooks.checkpoint.interval': 100,
        'default_hooks.image_grid.preview_conditions': 0})
    cfg = prepare_config(cfg, config_path=toy, work_dir=str(tmp_path))
    cfg.experiment_name = 'mp'
    RecordingSelector.seen.clear()
    runner = build_runner(cfg)
    runner.train()
    assert len(RecordingSelector.seen) == 2
    mp = runner.model.token_selectors['mp']
    for rec in RecordingSelector.seen:
        r, rewards = rec['rollout'], rec['rewards']
        adv = Advantages({'a': torch.zeros(r.batch_size, 1)}, {'a': 1.0}, rewards=rewards)
        tw = select(mp, r, adv)
        inside = propagate_mask(rewards['r'].regions.float(), r.action_pos)
        empty = ~rewards['r'].regions.flatten(1).any(1)
        gate = torch.where(inside | empty[:, None], 1.0, 0.1)
        assert torch.allclose(tw.pg, gate / gate.mean(1, keepdim=True))
