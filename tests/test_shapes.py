"""The Shapes benchmark: dataset determinism and splits, the prompt grammar, ShapesEval accuracy."""
from __future__ import annotations

import collections

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vargo.components.datasets.shapes import (
    CELL_ORIGINS, CELL_SIZE, CLASS_NAMES, COLOURS, HELD_OUT_PAIRS, KINDS, NUM_CLASSES, PALETTE,
    RELATIONS, SHAPES, SHAPES_VOCABULARY, SIZES, ObjectSpec, Placement, ShapesClassDataset,
    ShapesImageDataset, ShapesPromptDataset, Spec, all_specs, class_of_spec, parse_prompt,
    prompt_of, rasterize, render, sample_layout, shape_mask, spec_of_class, split_specs)
from vargo.components.rewards import shapes_eval  # noqa: F401  (registers ShapesEvalReward)
from vargo.components.rewards.shapes_eval import (
    ShapesEvalReward, detect_objects, label_components, relative_position, score_images,
    summarize_scores)
from vargo.core.registry import DATASETS, REWARD_HEADS, ConfigError
from vargo.core.types import Conditions, RewardContext, Rollout


def make_rollout(images: torch.Tensor, *, prompts=None, class_ids=None) -> Rollout:
    """A raster-AR rollout of ``B`` samples carrying ``images`` ``[B, 3, 32, 32]``."""
    b, a = images.shape[0], 64
    steps = torch.arange(a)
    return Rollout(cond=Conditions(class_ids=class_ids, prompts=prompts),
                   group_ids=torch.arange(b) // 2,
                   actions=torch.zeros(b, a, dtype=torch.long), logp_old=torch.zeros(b, a),
                   action_mask=torch.ones(b, a, dtype=torch.bool), action_step=steps,
                   action_pos=torch.stack([steps // 8, steps % 8], dim=-1), images=images)


def stack(ds, n=None) -> torch.Tensor:
    return torch.stack([ds[i]['image'] for i in range(n or len(ds))])             # [N, 3, 32, 32]


def paint(objects) -> torch.Tensor:
    """``[1, 3, 32, 32]`` image of ``(colour, shape, size, y, x)`` objects."""
    return torch.from_numpy(rasterize([Placement(c, s, n, y, x, 0) for c, s, n, y, x in objects])
                            .transpose(2, 0, 1).copy())[None]


# ---- dataset -----------------------------------------------------------------------------------
@pytest.mark.parametrize('task', ['c2i', 't2i'])
def test_images_are_deterministic_and_seeded(task):
    a = stack(ShapesImageDataset(split='train', task=task, num_samples=64, seed=0))
    b = stack(ShapesImageDataset(split='train', task=task, num_samples=64, seed=0))
    c = stack(ShapesImageDataset(split='train', task=task, num_samples=64, seed=1))
    e = stack(ShapesImageDataset(split='eval', task=task, num_samples=64, seed=0))
    assert a.shape == (64, 3, 32, 32) and a.dtype == torch.float32
    assert a.numpy().tobytes() == b.numpy().tobytes()                    # same seed: same bytes
    assert set(a.unique().tolist()) <= {0.0, 1.0}
    differ = lambda x, y: (x != y).flatten(1).any(1).float().mean().item()  # noqa: E731
    assert differ(a, c) > 0.9 and differ(a, e) > 0.9     # new seed / split: new images


def test_class_dataset_labels_names_and_images():
    ds = ShapesClassDataset(split='eval', num_samples=40)
    assert NUM_CLASSES == len(COLOURS) * len(SHAPES) == 18
    assert [ds[i]['class_id'] for i in range(40)] == [i % 18 for i in range(40)]
    assert len(ShapesClassDataset(split='train')) == 18
    assert ds.class_names[0] == 'red circle' and ds.class_names[5] == 'green triangle'
    for k in range(NUM_CLASSES):                 # class = colour_index * 3 + shape_index
        c, s = CLASS_NAMES[k].split()
        assert k == COLOURS.index(c) * 3 + SHAPES.index(s) == class_of_spec(spec_of_class(k))
        assert prompt_of(spec_of_class(k)) == f'a {CLASS_NAMES[k]}'
    img = ds.image(5)                            # green triangle: only green pixels
    assert torch.equal(img, ds.image(5)) and img[1].sum() > 0 and img[0].sum() == img[2].sum() == 0
    assert not torch.equal(img, ShapesClassDataset(split='train', num_samples=40).image(5))
    built = DATASETS.build(dict(type='ShapesClassDataset', split='train'))
    assert built.class_names == ds.class_names


def test_prompt_dataset_sizes_order_and_balance():
    sizes = {k: (len(split_specs(k, 'train')), len(split_specs(k, 'eval'))) for k in KINDS}
    assert sizes == {'single': (18, 18), 'count': (24, 12), 'binding': (84, 96),
                     'position': (528, 696)}
    full = ShapesPromptDataset(split='train')
    assert len(full) == 18 + 24 + 84 + 528 and len(set(full.prompts)) == len(full)
    assert full.prompts == ShapesPromptDataset(split='train').prompts
    assert full.prompts != ShapesPromptDataset(split='train', seed=1).prompts
    bal = ShapesPromptDataset(split='train', num_prompts=400)
    kinds = collections.Counter(parse_prompt(bal[i]['prompt']).kind for i in range(400))
    assert kinds == {k: 100 for k in KINDS}
    only = ShapesPromptDataset(split='eval', kinds=('count',))
    assert sorted(only.prompts) == sorted(prompt_of(s) for s in split_specs('count', 'eval'))
    t2i = ShapesImageDataset(split='train', task='t2i', num_samples=8)
    assert [t2i[i]['prompt'] for i in range(8)] == \
        ShapesPromptDataset(split='train', num_prompts=8).prompts


def test_held_out_pairs_only_in_eval_compositions():
    assert len(HELD_OUT_PAIRS) == 6
    assert collections.Counter(c for c, _ in HELD_OUT_PAIRS) == {c: 1 for c in COLOURS}
    assert collections.Counter(s for _, s in HELD_OUT_PAIRS) == {s: 2 for s in SHAPES}
    train = [parse_prompt(p) for p in ShapesPromptDataset(split='train').prompts]
    evals = [parse_prompt(p) for p in ShapesPromptDataset(split='eval').prompts]
    for spec in train:
        if spec.kind != 'single':
            assert not set(spec.pairs) & HELD_OUT_PAIRS, prompt_of(spec)
    assert all(set(s.pairs) & HELD_OUT_PAIRS for s in evals if s.kind != 'single')
    assert {s for s in train if s.kind == 'single'} == {s for s in evals if s.kind == 'single'}
    for kind in KINDS:                           # the splits partition the compositional prompts
        both = set(split_specs(kind, 'train')) | set(split_specs(kind, 'eval'))
        assert both == set(all_specs(kind))
    for s in all_specs('binding'):               # binding: colours and shapes both differ
        assert s.objects[0].colour != s.objects[1].colour
        assert s.objects[0].shape != s.objects[1].shape


def test_layout_geometry():
    rng = np.random.default_rng(0)
    for spec in all_specs('count')[:12] + all_specs('position')[:40]:
        placements = sample_layout(spec, rng)
        assert len({p.cell for p in placements}) == len(placements) == spec.num_objects
        for p in placements:                     # inside its 10-px cell: the gutters stay black
            row, col = divmod(p.cell, 3)
            assert CELL_ORIGINS[row] <= p.y and p.y + p.size <= CELL_ORIGINS[row] + CELL_SIZE
            assert CELL_ORIGINS[col] <= p.x and p.x + p.size <= CELL_ORIGINS[col] + CELL_SIZE
        img = rasterize(placements)
        assert img[10].sum() == img[21].sum() == img[:, 10].sum() == img[:, 21].sum() == 0
        painted = sum(shape_mask(p.shape, p.size).sum() for p in placements)
        assert (img.sum(-1) > 0).sum() == painted             # objects never overlap
    assert shape_mask('square', 7).all() and shape_mask('triangle', 9)[0].sum() == 1


def test_bad_arguments_name_the_allowed_values():
    with pytest.raises(ValueError, match=r"split='test' is not one of \('train', 'eval'\)"):
        ShapesClassDataset(split='test')
    with pytest.raises(ValueError, match="kind='counting'.*did you mean 'count'"):
        ShapesPromptDataset(split='train', kinds=('counting',))
    with pytest.raises(ValueError, match="task='i2i'"):
        ShapesImageDataset(split='train', task='i2i', num_samples=4)
    with pytest.raises(ValueError, match="colour='purple'"):
        Spec('single', (ObjectSpec('purple', 'circle'),))
    with pytest.raises(ValueError, match='counts in \\(2, 3\\)'):
        Spec('count', (ObjectSpec('red', 'circle', 4),))
    with pytest.raises(ValueError, match='two different objects'):
        Spec('binding', (ObjectSpec('red', 'circle'), ObjectSpec('red', 'circle')))


# ---- grammar -----------------------------------------------------------------------------------
_objects = st.builds(ObjectSpec, st.sampled_from(COLOURS), st.sampled_from(SHAPES))


@st.composite
def specs(draw):
    kind = draw(st.sampled_from(KINDS))
    if kind in ('single', 'count'):
        o = draw(_objects)
        n = 1 if kind == 'single' else draw(st.sampled_from((2, 3)))
        return Spec(kind, (ObjectSpec(o.colour, o.shape, n),))
    a = draw(_objects)
    b = draw(_objects.filter(lambda o: o.pair != a.pair))
    return Spec(kind, (a, b), draw(st.sampled_from(RELATIONS)) if kind == 'position' else None)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(spec=specs(), seed=st.integers(0, 2 ** 32 - 1))
def test_prompt_round_trip_and_render_satisfies_spec(spec, seed):
    prompt = prompt_of(spec)
    assert parse_prompt(prompt) == spec
    assert parse_prompt(f'  {prompt.upper()}. ') == spec
    assert set(prompt.split()) <= set(SHAPES_VOCABULARY)
    image = render(spec, np.random.default_rng(seed))
    assert torch.equal(image, render(spec, seed))
    res = score_images(image[None], [spec])
    assert bool(res.strict[0]) and float(res.soft[0]) == 1.0


def test_vocabulary_is_fixed_and_complete():
    words = {w for k in KINDS for s in all_specs(k) for w in prompt_of(s).split()}
    assert words == set(SHAPES_VOCABULARY) and len(SHAPES_VOCABULARY) == 21
    assert len(set(SHAPES_VOCABULARY)) == len(SHAPES_VOCABULARY)


@pytest.mark.parametrize('text, match', [
    ('a purple circle', r"word 2 is 'purple', expected a colour"),
    ('two red circle', r"word 3 is 'circle', expected a plural shape"),
    ('a red circle next to a blue square', r"word 4 is 'next'"),
    ('a red circle and a blue square please', r"unexpected 'please'"),
    ('a red circle left a blue square', r"word 5 is 'a', expected the word \('of',\)"),
    ('', r"word 1 is '<end>'"),
])
def test_parse_errors_name_the_word_and_allowed_words(text, match):
    with pytest.raises(ValueError, match=match):
        parse_prompt(text)


# ---- ShapesEval --------------------------------------------------------------------------------
def test_accuracy_on_ground_truth_c2i():
    ds = ShapesClassDataset(split='eval', num_samples=306)
    images = torch.stack([ds.image(i) for i in range(len(ds))])
    ids = torch.tensor([ds[i]['class_id'] for i in range(len(ds))])
    res = score_images(images, ids)
    assert res.strict.float().mean() >= 0.98 and res.soft.mean() >= 0.99
    assert res.strict.all()                                              # in fact exact


@pytest.mark.parametrize('split', ['train', 'eval'])
def test_accuracy_on_ground_truth_t2i_all_kinds(split):
    ds = ShapesImageDataset(split=split, task='t2i', num_samples=320, seed=7)
    images, prompts = stack(ds), ds.prompts
    res = score_images(images, prompts)
    metrics = summarize_scores(res, prompts)
    for kind in KINDS:
        assert metrics[f'kind/{kind}'] >= 0.98, metrics
    assert metrics['strict'] >= 0.98 and metrics['clause/position'] >= 0.98
    assert res.strict.all()                                              # in fact exact


def test_low_on_wrong_prompts():
    ds = ShapesImageDataset(split='train', task='t2i', num_samples=320, seed=3)
    images, prompts = stack(ds), ds.prompts
    right = score_images(images, prompts)
    for shift in (1, 4):                         # 4 keeps the kind (kinds cycle with period 4)
        wrong = [prompts[(i + shift) % len(prompts)] for i in range(len(prompts))]
        assert sum(w != p for w, p in zip(wrong, prompts)) == len(prompts)
        res = score_images(images, wrong)
        assert res.strict.float().mean() < 0.2
        assert res.soft.mean() < right.soft.mean() - 0.6
    c2i = torch.stack([ShapesClassDataset(split='train', num_samples=36).image(i)
                       for i in range(36)])
    wrong_ids = (torch.arange(36) + 1) % 18
    res = score_images(c2i, wrong_ids)
    assert not res.strict.any() and res.soft.max() == 0


def test_blank_and_noise_score_zero():
    prompts = ShapesPromptDataset(split='train', num_prompts=64).prompts
    gen = torch.Generator().manual_seed(0)
    for images in (torch.zeros(64, 3, 32, 32), torch.ones(64, 3, 32, 32),
                   torch.full((64, 3, 32, 32), 0.5), torch.rand(64, 3, 32, 32, generator=gen)):
        res = score_images(images, prompts)
        assert not res.strict.any() and res.soft.max() <= 0.2
        assert res.soft.min() >= 0
    red = torch.zeros(1, 3, 32, 32)
    red[:, 0] = 1                                # a canvas-sized red "square" is no object
    assert detect_objects(red) == [[]]


def test_soft_scores_hand_derived():
    """Clause credits: object 1/0, count max(0, 1 - |k - n| / n), position 1/0; soft = mean."""
    three_red_circles = paint([('red', 'circle', 7, 0, 0), ('red', 'circle', 9, 11, 11),
                               ('red', 'circle', 7, 22, 22)])
    blue_sq_left_of_green_tri = paint([('blue', 'square', 7, 11, 0),
                                       ('green', 'triangle', 9, 11, 22)])
    swapped_binding = paint([('blue', 'circle', 7, 0, 0), ('red', 'square', 7, 0, 22)])
    cases = [
        (three_red_circles, 'three red circles', 1.0, True),
        (three_red_circles, 'two red circles', (1 + 0.5) / 2, False),   # k=3, n=2
        (three_red_circles, 'a red circle', (1 + 0) / 2, False),        # k=3, n=1
        (three_red_circles, 'three blue circles', 0.0, False),
        (blue_sq_left_of_green_tri, 'a blue square left of a green triangle', 1.0, True),
        (blue_sq_left_of_green_tri, 'a blue square right of a green triangle', 4 / 5, False),
        (blue_sq_left_of_green_tri, 'a blue square above a green triangle', 4 / 5, False),
        (blue_sq_left_of_green_tri, 'a green triangle right of a blue square', 1.0, True),
        (blue_sq_left_of_green_tri, 'a blue square and a green circle', 2 / 4, False),
        (swapped_binding, 'a red circle and a blue square', 0.0, False),
        (swapped_binding, 'a blue circle and a red square', 1.0, True),
    ]
    res = score_images(torch.cat([c[0] for c in cases]), [c[1] for c in cases])
    torch.testing.assert_close(res.soft, torch.tensor([c[2] for c in cases]))
    assert res.strict.tolist() == [c[3] for c in cases]
    # per-clause breakdown of 'two red circles' on three circles: object 1/1, count 0/1
    assert res.per_clause['object'][1] == 1 and res.per_clause['count'][1] == 0
    assert torch.isnan(res.per_clause['position'][1]) and res.per_clause['position'][5] == 0


def test_geneval_relative_position():
    box = lambda cx, cy, s=8: (cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2)  # noqa: E731
    assert relative_position(box(5, 16), box(27, 16)) == {'left of'}
    assert relative_position(box(27, 16), box(5, 16)) == {'right of'}
    assert relative_position(box(16, 5), box(16, 27)) == {'above'}
    assert relative_position(box(5, 5), box(27, 27)) == {'left of', 'above'}  # 45 degrees: both
    assert relative_position(box(5, 5), box(12, 27)) == {'above'}             # steep: only above
    assert relative_position(box(16, 16), box(17, 16)) == set()               # inside dead zone


def test_label_components_matches_bfs():
    rng = np.random.default_rng(0)
    cmap = np.where(rng.random((3, 32, 32)) < 0.6, rng.integers(0, 2, (3, 32, 32)), -1)
    lab = label_components(cmap)
    for b in range(3):                           # reference: BFS flood fill, 4-connectivity
        ref = -np.ones((32, 32), dtype=np.int64)
        for start in range(32 * 32):
            y, x = divmod(start, 32)
            if cmap[b, y, x] < 0 or ref[y, x] >= 0:
                continue
            ref[y, x], queue = start, [(y, x)]
            while queue:
                y, x = queue.pop()
                for v, u in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                    inside = 0 <= v < 32 and 0 <= u < 32
                    if inside and ref[v, u] < 0 and cmap[b, v, u] == cmap[b, y, x]:
                        ref[v, u] = start
                        queue.append((v, u))
        np.testing.assert_array_equal(lab[b], ref)


def test_robust_to_mild_colour_shifts():
    ds = ShapesImageDataset(split='eval', task='t2i', num_samples=128, seed=5)
    gen = torch.Generator().manual_seed(0)
    images = (0.8 * stack(ds) + 0.05 * torch.randn(128, 3, 32, 32, generator=gen)).clamp(0, 1)
    assert score_images(images, ds.prompts).strict.all()


def test_reward_head_through_registry():
    head = REWARD_HEADS.build(dict(type='ShapesEvalReward', task='t2i'))
    assert isinstance(head, ShapesEvalReward)
    ds = ShapesImageDataset(split='eval', task='t2i', num_samples=16, seed=0)
    images = stack(ds)
    images[8:] = 0                               # second half blank
    out = head(make_rollout(images, prompts=ds.prompts), RewardContext())
    assert out.scores.shape == (16,) and out.scores.dtype == torch.float32
    assert out.strict.tolist() == [True] * 8 + [False] * 8
    assert ((out.scores >= 0) & (out.scores <= 1)).all()
    assert out.metrics['strict'] == 0.5 and out.metrics['kind/position'] == 0.5
    assert set(out.metrics) == {'soft', 'strict', 'clause/object', 'clause/count',
                                'clause/position', 'kind/single', 'kind/count', 'kind/binding',
                                'kind/position'}
    c2i = REWARD_HEADS.build(dict(type='ShapesEvalReward', task='c2i', min_area=10))
    cls = ShapesClassDataset(split='eval', num_samples=18)
    imgs = torch.stack([cls.image(i) for i in range(18)])
    out = c2i(make_rollout(imgs, class_ids=torch.arange(18)), RewardContext())
    assert out.strict.all() and out.metrics == {'soft': 1.0, 'strict': 1.0, 'clause/object': 1.0,
                                                'clause/count': 1.0, 'kind/single': 1.0}


def test_reward_head_errors():
    with pytest.raises(ConfigError, match='missing required setting.*task'):
        REWARD_HEADS.build(dict(type='ShapesEvalReward'))
    with pytest.raises(ValueError, match="task='text'.*'c2i'.*'t2i'"):
        ShapesEvalReward(task='text')
    head = ShapesEvalReward(task='t2i')
    imgs = torch.zeros(2, 3, 32, 32)
    with pytest.raises(ValueError, match="reads rollout.cond.prompts but it is None"):
        head(make_rollout(imgs, class_ids=torch.zeros(2, dtype=torch.long)), RewardContext())
    with pytest.raises(ValueError, match=r'expects Shapes images \[B, 3, 32, 32\]'):
        head(make_rollout(torch.zeros(2, 3, 64, 64), prompts=['a red circle'] * 2), RewardContext())
    with pytest.raises(ValueError, match="word 2 is 'purple'"):
        head(make_rollout(imgs, prompts=['a purple circle'] * 2), RewardContext())


def test_palette_is_well_separated():
    refs = np.concatenate([np.zeros((1, 3)), PALETTE])
    d = np.linalg.norm(refs[:, None] - refs[None], axis=-1)
    assert d[~np.eye(len(refs), dtype=bool)].min() == 1.0               # radius 0.5 is unambiguous
    assert sorted(SIZES.values()) == [7, 9]
