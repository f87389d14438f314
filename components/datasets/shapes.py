"""The Shapes benchmark world: a deterministic procedural dataset of coloured shapes.

No pretrained weights can be downloaded, so vargo ships a small world in which every method runs
end to end on a CPU in minutes (README.md, "The Shapes benchmark"). This module is its data:
images, class labels, compositional prompts, the prompt grammar and the train/eval splits. The
reward that checks a generated image against a prompt is
:class:`vargo.components.rewards.shapes_eval.ShapesEvalReward`.

Image
-----
``32 x 32`` RGB, float in {0, 1}. With a downsample-4 tokenizer an image is ``8 x 8 = 64``
tokens: the size at which a 1-2M-parameter autoregressive model trains in minutes on 2 CPU
cores, while 1-3 objects of 7-9 px stay recognisable (at 16 px a triangle and a circle differ
by a handful of pixels; at 64 px the sequence is 4x longer and training 4-16x slower).

* Background: black ``(0, 0, 0)``. Every palette colour is a corner of the RGB cube, at
  distance >= 1 from black and from each other, so nearest-colour segmentation with a radius
  of 0.5 is unambiguous (the balls are disjoint).
* Palette (:data:`COLOURS`, :data:`PALETTE`): red ``(1,0,0)``, green ``(0,1,0)``, blue
  ``(0,0,1)``, yellow ``(1,1,0)``, magenta ``(1,0,1)``, cyan ``(0,1,1)``.
* Shapes (:data:`SHAPES`): circle, square, triangle (apex up), hard-edged: a pixel is inside
  when at least half of it is covered (16x16 supersampling, computed once at import).
  Bounding-box fill ratios: square 1, circle 0.76-0.85, triangle 0.51-0.52.
* Sizes (:data:`SIZES`): small 7 px, large 9 px (odd, so every shape is left-right symmetric
  with a one-pixel apex).
* Grid: a 3 x 3 grid of 10-px cells with origins at 0, 11, 22 px; pixel rows/columns 10 and 21
  are a gutter no object ever touches, so two objects are always separated by >= 1 px. An
  object lies entirely inside its cell at a uniformly random offset (the jitter): 0..3 px for
  small, 0..1 px for large objects. Distinct objects occupy distinct cells.

Classes (class-conditional models)
----------------------------------
A class is one object, colour x shape: ``class_id = colour_index * len(SHAPES) +
shape_index`` (6 x 3 = 18 classes), named ``"<colour> <shape>"`` (:data:`CLASS_NAMES`, e.g.
class 0 is ``"red circle"``, class 5 is ``"green triangle"``).

Prompt grammar (text-conditional models)
----------------------------------------
Lower-case words separated by single spaces, from the fixed :data:`SHAPES_VOCABULARY`::

    prompt   := single | count | binding | position
    single   := "a" COLOUR SHAPE                          "a red circle"
    count    := NUMBER COLOUR SHAPE "s"                   "two red circles", "three blue squares"
    binding  := "a" COLOUR SHAPE "and" "a" COLOUR SHAPE   "a red circle and a blue square"
    position := "a" COLOUR SHAPE RELATION "a" COLOUR SHAPE
                                                 "a blue square left of a green triangle"
    NUMBER   := "two" | "three"
    RELATION := "left of" | "right of" | "above" | "below"

:func:`parse_prompt` turns a prompt into a :class:`Spec` (kind, objects with counts, relation)
and :func:`prompt_of` back; ``parse_prompt(prompt_of(spec)) == spec`` for every valid spec.
What a spec asserts is its list of clauses (:attr:`Spec.clauses`), the unit the reward scores:

* ``ObjectClause(colour, shape)``: at least one such object is present (every described object);
* ``CountClause(colour, shape, n)``: exactly ``n`` such objects (every described object; "a"
  means exactly one);
* ``PositionClause(subject, relation, reference)``: the subject object lies in ``relation`` to
  the reference object (position prompts only).

Rendering (:func:`render`) places the described objects and nothing else. For a relation the
two cells are drawn from the pairs where the relation's axis dominates: ``left of`` needs
``col_a < col_b`` and ``|row_a - row_b| < col_b - col_a`` (so the direction is within 45 degrees
of the axis and GenEval's position rule holds for every jitter).

Splits
------
* Class-conditional: 'train' and 'eval' have the same 18 classes; their images come from
  disjoint random streams (the split is part of every image's seed).
* Text-conditional: six colour-shape pairs are *held out* of compositional prompts
  (:data:`HELD_OUT_PAIRS`: red triangle, green circle, blue square, yellow circle, magenta
  square, cyan triangle -- each colour once, each shape twice). 'train' has all 18 single
  prompts and the count/binding/position prompts whose objects are all *not* held out; 'eval'
  has the same 18 single prompts and exactly the count/binding/position prompts that contain at
  least one held-out pair. So a model sees every pair alone in training and is tested on
  composing the held-out pairs (per-kind metrics separate the two). Binding prompts use two
  objects that differ in colour *and* shape (so swapping the colours is a distinct failure);
  position prompts use two different objects (any colours and shapes, not both equal).

Prompt counts (train/eval): single 18/18, count 24/12, binding 84/96, position 528/696.

Determinism: every image is drawn from ``numpy.random.default_rng((seed, split_code, index))``,
so the same ``(seed, split, index)`` gives identical bytes on every machine and rank.

Speed: masks are rasterised once at import and pasted; about 20,000 images/s through
``ShapesImageDataset.__getitem__`` on one CPU core.
"""
from __future__ import annotations

import difflib
import itertools
from dataclasses import dataclass
from functools import lru_cache
from typing import ClassVar, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from vargo.core.registry import DATASETS

__all__ = [
    'IMAGE_SIZE', 'COLOURS', 'PALETTE', 'BACKGROUND', 'SHAPES', 'SIZES', 'RELATIONS', 'KINDS',
    'SPLITS', 'NUM_CLASSES', 'CLASS_NAMES', 'HELD_OUT_PAIRS', 'SHAPES_VOCABULARY', 'CELL_SIZE',
    'CELL_ORIGINS', 'ObjectSpec', 'Spec', 'ObjectClause', 'CountClause', 'PositionClause',
    'Clause', 'CLAUSE_TYPES', 'Placement', 'parse_prompt', 'prompt_of', 'spec_of_class',
    'class_of_spec', 'all_specs',
    'split_specs', 'sample_layout', 'rasterize', 'render', 'item_rng', 'shape_mask',
    'ShapesClassDataset', 'ShapesPromptDataset', 'ShapesImageDataset',
]

IMAGE_SIZE = 32
#: palette colour names, in class-index order
COLOURS = ('red', 'green', 'blue', 'yellow', 'magenta', 'cyan')
#: ``[len(COLOURS), 3]`` RGB in [0, 1]
PALETTE = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1], [0, 1, 1]],
                   dtype=np.float32)
BACKGROUND = np.zeros(3, dtype=np.float32)
SHAPES = ('circle', 'square', 'triangle')
#: object side length in pixels
SIZES = {'small': 7, 'large': 9}
#: side of a grid cell, and the pixel origin of each of the 3 cells along an axis
CELL_SIZE = 10
CELL_ORIGINS = (0, 11, 22)
GRID = len(CELL_ORIGINS)
RELATIONS = ('left of', 'right of', 'above', 'below')
KINDS = ('single', 'count', 'binding', 'position')
SPLITS = ('train', 'eval')
_SPLIT_CODE = {'train': 0, 'eval': 1}
NUM_CLASSES = len(COLOURS) * len(SHAPES)
CLASS_NAMES = tuple(f'{c} {s}' for c in COLOURS for s in SHAPES)
#: colour-shape pairs that appear in count/binding/position prompts only in the 'eval' split
HELD_OUT_PAIRS = frozenset({('red', 'triangle'), ('green', 'circle'), ('blue', 'square'),
                            ('yellow', 'circle'), ('magenta', 'square'), ('cyan', 'triangle')})

_NUMBER_WORDS = {1: 'a', 2: 'two', 3: 'three'}
_WORD_NUMBERS = {'two': 2, 'three': 3}
_PLURAL = {s: s + 's' for s in SHAPES}
_SINGULAR = {p: s for s, p in _PLURAL.items()}

#: every word a Shapes prompt can contain (for a word-level tokenizer), in a fixed order
SHAPES_VOCABULARY = (['a', 'two', 'three', 'and', 'left', 'right', 'of', 'above', 'below']
                     + list(COLOURS) + list(SHAPES) + [_PLURAL[s] for s in SHAPES])

_GRAMMAR = ('prompts are "a COLOUR SHAPE", "two|three COLOUR SHAPEs", '
            '"a COLOUR SHAPE and a COLOUR SHAPE" or "a COLOUR SHAPE RELATION a COLOUR SHAPE" with '
            f'COLOUR in {COLOURS}, SHAPE in {SHAPES}, RELATION in {RELATIONS}')


def _check_choice(what: str, value, allowed) -> None:
    if value not in allowed:
        hint = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
        raise ValueError(f'{what}={value!r} is not one of {tuple(allowed)}'
                         + (f'; did you mean {hint[0]!r}?' if hint else ''))


# ---- specs and clauses -------------------------------------------------------------------------
@dataclass(frozen=True)
class ObjectClause:
    """At least one object of ``colour`` and ``shape`` is present."""
    colour: str
    shape: str
    type: ClassVar[str] = 'object'


@dataclass(frozen=True)
class CountClause:
    """Exactly ``count`` objects of ``colour`` and ``shape`` are present."""
    colour: str
    shape: str
    count: int
    type: ClassVar[str] = 'count'


@dataclass(frozen=True)
class PositionClause:
    """An object ``subject`` (colour, shape) is ``relation`` an object ``reference``."""
    subject: tuple[str, str]
    relation: str
    reference: tuple[str, str]
    type: ClassVar[str] = 'position'


Clause = Union[ObjectClause, CountClause, PositionClause]
CLAUSE_TYPES = ('object', 'count', 'position')


@dataclass(frozen=True)
class ObjectSpec:
    """``count`` objects of one colour and shape."""
    colour: str
    shape: str
    count: int = 1

    @property
    def pair(self) -> tuple[str, str]:
        return (self.colour, self.shape)


@dataclass(frozen=True)
class Spec:
    """What one prompt (or class) describes: the objects of the scene and an optional relation.

    Attributes:
        kind: one of :data:`KINDS`.
        objects: ``single``/``count``: one :class:`ObjectSpec` (count 1, resp. 2 or 3);
            ``binding``/``position``: two single objects of different (colour, shape).
        relation: ``position`` only, one of :data:`RELATIONS`: ``objects[0]`` (the subject) is
            ``relation`` ``objects[1]`` (the reference).
    """

    kind: str
    objects: tuple[ObjectSpec, ...]
    relation: Optional[str] = None

    def __post_init__(self):
        _check_choice('Spec.kind', self.kind, KINDS)
        object.__setattr__(self, 'objects', tuple(self.objects))
        for o in self.objects:
            _check_choice('ObjectSpec.colour', o.colour, COLOURS)
            _check_choice('ObjectSpec.shape', o.shape, SHAPES)
        n_obj = 1 if self.kind in ('single', 'count') else 2
        counts = (1,) if self.kind != 'count' else (2, 3)
        if len(self.objects) != n_obj:
            raise ValueError(f'a {self.kind!r} spec has {n_obj} object(s), got '
                             f'{len(self.objects)}: {self.objects}')
        bad = [o.count for o in self.objects if o.count not in counts]
        if bad:
            raise ValueError(f'a {self.kind!r} spec has object counts in {counts}, got {bad}')
        if n_obj == 2 and self.objects[0].pair == self.objects[1].pair:
            raise ValueError(f'a {self.kind!r} spec needs two different objects, got '
                             f'{self.objects[0].pair} twice (use a count prompt)')
        if self.kind == 'position':
            _check_choice('Spec.relation', self.relation, RELATIONS)
        elif self.relation is not None:
            raise ValueError(f'only position specs have a relation; a {self.kind!r} spec got '
                             f'relation={self.relation!r}')

    @property
    def clauses(self) -> tuple[Clause, ...]:
        """What the spec asserts (see module docstring): object, count, position clauses."""
        out: list[Clause] = [ObjectClause(o.colour, o.shape) for o in self.objects]
        out += [CountClause(o.colour, o.shape, o.count) for o in self.objects]
        if self.relation is not None:
            out.append(PositionClause(self.objects[0].pair, self.relation, self.objects[1].pair))
        return tuple(out)

    @property
    def num_objects(self) -> int:
        return sum(o.count for o in self.objects)

    @property
    def pairs(self) -> tuple[tuple[str, str], ...]:
        return tuple(o.pair for o in self.objects)


def prompt_of(spec: Spec) -> str:
    """The prompt of a spec (the grammar of the module docstring).

    Args:
        spec: a valid :class:`Spec`.

    Returns:
        e.g. ``"a blue square left of a green triangle"``.
    """
    o = spec.objects
    if spec.kind == 'single':
        return f'a {o[0].colour} {o[0].shape}'
    if spec.kind == 'count':
        return f'{_NUMBER_WORDS[o[0].count]} {o[0].colour} {_PLURAL[o[0].shape]}'
    joint = 'and' if spec.kind == 'binding' else spec.relation
    return f'a {o[0].colour} {o[0].shape} {joint} a {o[1].colour} {o[1].shape}'


@lru_cache(maxsize=8192)
def parse_prompt(text: str) -> Spec:
    """Parse a Shapes prompt (case and surrounding whitespace/final period are ignored).

    Args:
        text: a prompt of the grammar in the module docstring.

    Returns:
        its :class:`Spec`.

    Raises:
        ValueError: naming the first unexpected word, the words allowed there and the grammar.
    """
    if not isinstance(text, str):
        raise TypeError(f'a Shapes prompt must be a str, got {type(text).__name__}: {text!r}')
    words = text.strip().lower().rstrip('.').split()

    def expect(i: int, allowed: Sequence[str], what: str) -> str:
        got = words[i] if i < len(words) else '<end>'
        if got not in allowed:
            raise ValueError(f'cannot parse Shapes prompt {text!r}: word {i + 1} is {got!r}, '
                             f'expected {what} {tuple(allowed)}; {_GRAMMAR}')
        return got

    def end(i: int) -> None:
        if i != len(words):
            raise ValueError(f'cannot parse Shapes prompt {text!r}: unexpected {words[i]!r} '
                             f'after a complete prompt; {_GRAMMAR}')

    first = expect(0, ('a', 'two', 'three'), 'an article or number')
    colour = expect(1, COLOURS, 'a colour')
    if first != 'a':
        shape = _SINGULAR[expect(2, tuple(_PLURAL.values()), 'a plural shape')]
        end(3)
        return Spec('count', (ObjectSpec(colour, shape, _WORD_NUMBERS[first]),))
    shape = expect(2, SHAPES, 'a shape')
    if len(words) == 3:
        return Spec('single', (ObjectSpec(colour, shape),))
    joint = expect(3, ('and', 'left', 'right', 'above', 'below'), 'a conjunction or relation')
    i = 4
    if joint in ('left', 'right'):
        expect(4, ('of',), 'the word')
        joint, i = f'{joint} of', 5
    expect(i, ('a',), 'the article')
    colour2 = expect(i + 1, COLOURS, 'a colour')
    shape2 = expect(i + 2, SHAPES, 'a shape')
    end(i + 3)
    objs = (ObjectSpec(colour, shape), ObjectSpec(colour2, shape2))
    if joint == 'and':
        return Spec('binding', objs)
    return Spec('position', objs, joint)


def spec_of_class(class_id: int) -> Spec:
    """The single-object spec of class ``class_id = colour_index * 3 + shape_index``."""
    class_id = int(class_id)
    if not 0 <= class_id < NUM_CLASSES:
        raise ValueError(f'class_id={class_id} is outside [0, {NUM_CLASSES}) '
                         f'({len(COLOURS)} colours x {len(SHAPES)} shapes)')
    c, s = divmod(class_id, len(SHAPES))
    return Spec('single', (ObjectSpec(COLOURS[c], SHAPES[s]),))


def class_of_spec(spec: Spec) -> int:
    """The class id of a single-object spec (inverse of :func:`spec_of_class`)."""
    if spec.kind != 'single':
        raise ValueError(f'only single-object specs have a class id, got kind {spec.kind!r}')
    o = spec.objects[0]
    return COLOURS.index(o.colour) * len(SHAPES) + SHAPES.index(o.shape)


# ---- prompt sets and splits --------------------------------------------------------------------
_PAIRS = tuple(itertools.product(COLOURS, SHAPES))


def all_specs(kind: str) -> list[Spec]:
    """Every spec of one kind that the datasets use, in a fixed order (both splits).

    Binding specs use two objects differing in colour and in shape; position specs any two
    different objects with every relation.
    """
    _check_choice('kind', kind, KINDS)
    if kind == 'single':
        return [Spec('single', (ObjectSpec(c, s),)) for c, s in _PAIRS]
    if kind == 'count':
        return [Spec('count', (ObjectSpec(c, s, n),)) for c, s in _PAIRS for n in (2, 3)]
    if kind == 'binding':
        return [Spec('binding', (ObjectSpec(*a), ObjectSpec(*b))) for a in _PAIRS for b in _PAIRS
                if a[0] != b[0] and a[1] != b[1]]
    return [Spec('position', (ObjectSpec(*a), ObjectSpec(*b)), r)
            for a in _PAIRS for b in _PAIRS if a != b for r in RELATIONS]


def _in_split(spec: Spec, split: str) -> bool:
    if spec.kind == 'single':
        return True
    held = any(p in HELD_OUT_PAIRS for p in spec.pairs)
    return held if split == 'eval' else not held


@lru_cache(maxsize=None)
def _split_specs(kind: str, split: str) -> tuple[Spec, ...]:
    return tuple(s for s in all_specs(kind) if _in_split(s, split))


def split_specs(kind: str, split: str) -> list[Spec]:
    """The specs of ``kind`` in ``split`` (see "Splits" in the module docstring)."""
    _check_choice('kind', kind, KINDS)
    _check_choice('split', split, SPLITS)
    return list(_split_specs(kind, split))


# ---- rendering ---------------------------------------------------------------------------------
def _rasterize_shape(shape: str, size: int, supersample: int = 16) -> np.ndarray:
    t = (np.arange(size * supersample) + 0.5) / supersample
    y, x = np.meshgrid(t, t, indexing='ij')
    r = size / 2
    if shape == 'circle':
        inside = (x - r) ** 2 + (y - r) ** 2 <= r * r
    elif shape == 'square':
        inside = np.ones_like(x, dtype=bool)
    else:                                   # apex at the top centre, base along the bottom
        inside = np.abs(x - r) <= y / 2
    coverage = inside.reshape(size, supersample, size, supersample).mean(axis=(1, 3))
    return coverage >= 0.5


_MASKS = {(s, n): _rasterize_shape(s, n) for s in SHAPES for n in SIZES.values()}


def shape_mask(shape: str, size: int) -> np.ndarray:
    """``[size, size]`` bool mask of a shape (a copy of the precomputed one)."""
    _check_choice('shape', shape, SHAPES)
    _check_choice('size', size, tuple(SIZES.values()))
    return _MASKS[(shape, size)].copy()


def _relation_cells(relation: str) -> np.ndarray:
    """``[P, 2]`` (subject cell, reference cell) pairs, cell = row * 3 + col, where the
    relation's axis dominates (see module docstring)."""
    axis, sign = {'left of': (1, 1), 'right of': (1, -1),
                  'above': (0, 1), 'below': (0, -1)}[relation]
    pairs = []
    for a, b in itertools.product(range(GRID * GRID), repeat=2):
        da = np.subtract(divmod(b, GRID), divmod(a, GRID)) * sign   # (drow, dcol), b minus a
        if da[axis] > 0 and abs(da[1 - axis]) < da[axis]:
            pairs.append((a, b))
    return np.array(pairs, dtype=np.int64)


_RELATION_CELLS = {r: _relation_cells(r) for r in RELATIONS}
_COLOUR_INDEX = {c: i for i, c in enumerate(COLOURS)}
_SIZE_VALUES = np.array(sorted(SIZES.values()))


@dataclass(frozen=True)
class Placement:
    """One drawn object: colour, shape, side ``size`` px, top-left pixel ``(y, x)``, grid cell."""
    colour: str
    shape: str
    size: int
    y: int
    x: int
    cell: int


def sample_layout(spec: Spec, rng: np.random.Generator) -> tuple[Placement, ...]:
    """Draw cells, sizes and jitter for the objects of ``spec``.

    Args:
        spec: what to draw.
        rng: the random source (all randomness of an image comes from it).

    Returns:
        one :class:`Placement` per object, ``spec.objects`` order (counts expanded).
    """
    kinds = [(o.colour, o.shape) for o in spec.objects for _ in range(o.count)]
    n = len(kinds)
    if spec.relation is None:
        cells = rng.permutation(GRID * GRID)[:n]
    else:
        table = _RELATION_CELLS[spec.relation]
        cells = table[rng.integers(len(table))]
    sizes = _SIZE_VALUES[rng.integers(0, len(_SIZE_VALUES), size=n)]
    offsets = (rng.random((n, 2)) * (CELL_SIZE - sizes + 1)[:, None]).astype(np.int64)  # [n, 2]
    out = []
    for (colour, shape), cell, size, (dy, dx) in zip(kinds, cells, sizes, offsets):
        row, col = divmod(int(cell), GRID)
        out.append(Placement(colour, shape, int(size), CELL_ORIGINS[row] + int(dy),
                             CELL_ORIGINS[col] + int(dx), int(cell)))
    return tuple(out)


def rasterize(placements: Sequence[Placement], out: Optional[np.ndarray] = None) -> np.ndarray:
    """Paint placements on a black canvas.

    Args:
        placements: objects to draw.
        out: optional ``[32, 32, 3]`` float32 canvas to draw into (it is cleared first).

    Returns:
        ``[32, 32, 3]`` float32 image, values in {0, 1}.
    """
    if out is None:
        out = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.float32)
    else:
        out.fill(0)
    for p in placements:
        region = out[p.y:p.y + p.size, p.x:p.x + p.size]              # [s, s, 3] view
        region[_MASKS[(p.shape, p.size)]] = PALETTE[_COLOUR_INDEX[p.colour]]
    return out


def item_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The random source of image ``index`` of ``split`` under ``seed``."""
    return np.random.default_rng((int(seed), _SPLIT_CODE[split], int(index)))


def render(spec: Spec, rng: Union[np.random.Generator, int]) -> Tensor:
    """A ground-truth image of ``spec``.

    Args:
        spec: what to draw (a :class:`Spec`; use :func:`parse_prompt` for a prompt).
        rng: a numpy Generator, or an int seed.

    Returns:
        ``[3, 32, 32]`` float32 tensor in {0, 1}.
    """
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    img = rasterize(sample_layout(spec, rng))                           # [H, W, 3]
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))


# ---- datasets ----------------------------------------------------------------------------------
def _check_common(split: str, seed: int) -> None:
    _check_choice('split', split, SPLITS)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f'seed={seed!r} must be an int >= 0')


#: the most items a Shapes dataset holds (its specs are listed eagerly)
MAX_ITEMS = 10 ** 7


def _check_count(name: str, value) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer))
                              or not 1 <= value <= MAX_ITEMS):
        raise ValueError(f'{name}={value!r} must be None or an int in [1, {MAX_ITEMS}]')


def _check_kinds(kinds) -> tuple:
    if isinstance(kinds, str):
        kinds = (kinds,)
    if not isinstance(kinds, (list, tuple)) or not all(isinstance(k, str) for k in kinds):
        raise ValueError(f'kinds={kinds!r} must be a non-empty list of prompt kinds from {KINDS}')
    kinds = tuple(kinds)
    if not kinds or len(set(kinds)) != len(kinds):
        raise ValueError(f'kinds={kinds!r} must be a non-empty subset of {KINDS} without '
                         f'repeats')
    for k in kinds:
        _check_choice('kind', k, KINDS)
    return kinds


@DATASETS.register_module()
class ShapesClassDataset(Dataset):
    """Class labels of the Shapes world for class-conditional models.

    Item ``i`` is ``{'class_id': i % 18}`` (every class equally often); its ground-truth image
    is :meth:`image`. 'train' and 'eval' have the same classes and different image seeds.

    Args:
        split: 'train' or 'eval'.
        num_samples: number of items (default: 18, one per class).
        seed: seed of the ground-truth images.
    """

    def __init__(self, *, split: str, num_samples: Optional[int] = None, seed: int = 0):
        _check_common(split, seed)
        _check_count('num_samples', num_samples)
        self.split, self.seed = split, int(seed)
        self.num_samples = NUM_CLASSES if num_samples is None else int(num_samples)
        self.class_names = list(CLASS_NAMES)
        self.metainfo = dict(classes=self.class_names, num_classes=NUM_CLASSES)

    def __len__(self) -> int:
        return self.num_samples

    def _check_index(self, i: int) -> int:
        if not -self.num_samples <= i < self.num_samples:
            raise IndexError(f'index {i} out of range for {self.num_samples} items')
        return i % self.num_samples

    def __getitem__(self, i: int) -> dict:
        return {'class_id': self._check_index(i) % NUM_CLASSES}

    def spec(self, i: int) -> Spec:
        return spec_of_class(self[i]['class_id'])

    def image(self, i: int) -> Tensor:
        """``[3, 32, 32]`` ground-truth image of item ``i``."""
        i = self._check_index(i)
        return render(self.spec(i), item_rng(self.seed, self.split, i))


@DATASETS.register_module()
class ShapesPromptDataset(Dataset):
    """Compositional prompts of the Shapes world for text-conditional models.

    With ``num_prompts=None`` every prompt of the chosen kinds in the split appears once, in an
    order shuffled by ``seed``. With ``num_prompts=N`` the items are kind-balanced: item ``i``
    is of kind ``kinds[i % K]`` and is prompt ``(i // K) mod n_kind`` of that kind's shuffled
    list (so small kinds repeat and large kinds are subsampled).

    Args:
        split: 'train' or 'eval' (see "Splits" in the module docstring).
        kinds: prompt kinds, a non-empty subset of ``('single', 'count', 'binding',
            'position')``.
        num_prompts: number of items, or None for every prompt once.
        seed: seed of the order and of the ground-truth images.
    """

    def __init__(self, *, split: str, kinds: Sequence[str] = KINDS,
                 num_prompts: Optional[int] = None, seed: int = 0):
        _check_common(split, seed)
        _check_count('num_prompts', num_prompts)
        kinds = _check_kinds(kinds)
        self.split, self.kinds, self.seed = split, kinds, int(seed)
        rng = np.random.default_rng((int(seed), _SPLIT_CODE[split], 1 << 20))
        per_kind = {k: [_split_specs(k, split)[j]
                        for j in rng.permutation(len(_split_specs(k, split)))] for k in kinds}
        if num_prompts is None:
            specs = [s for k in kinds for s in per_kind[k]]
            self.specs = [specs[j] for j in rng.permutation(len(specs))]
        else:
            n_k = len(kinds)
            self.specs = [per_kind[kinds[i % n_k]][(i // n_k) % len(per_kind[kinds[i % n_k]])]
                          for i in range(int(num_prompts))]
        self.prompts = [prompt_of(s) for s in self.specs]
        self.metainfo = dict(kinds=kinds, num_prompts=len(self.prompts),
                             vocabulary=list(SHAPES_VOCABULARY))

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, i: int) -> dict:
        return {'prompt': self.prompts[i]}

    def spec(self, i: int) -> Spec:
        return self.specs[i]

    def image(self, i: int) -> Tensor:
        """``[3, 32, 32]`` ground-truth image of item ``i``."""
        i = range(len(self))[i]
        return render(self.specs[i], item_rng(self.seed, self.split, i))


@DATASETS.register_module()
class ShapesImageDataset(Dataset):
    """Rendered ground-truth images with their condition, for pretraining tokenizers and base
    models and for FID real statistics.

    Item ``i`` is ``{'image': [3, 32, 32] float32 in {0, 1}, 'class_id': int}`` (c2i; class
    ``i % 18``) or ``{'image': ..., 'prompt': str}`` (t2i; the prompt is item ``i`` of
    ``ShapesPromptDataset(split=split, kinds=kinds, num_prompts=num_samples, seed=seed)``, so
    kinds are balanced). Images are rendered on access (tens of microseconds each).

    Args:
        split: 'train' or 'eval'.
        task: 'c2i' (class labels) or 't2i' (prompts).
        num_samples: number of images.
        seed: seed of the images (and of the prompt order).
        kinds: t2i prompt kinds (ignored for c2i).
    """

    def __init__(self, *, split: str, task: str, num_samples: int, seed: int = 0,
                 kinds: Sequence[str] = KINDS):
        _check_common(split, seed)
        _check_choice('task', task, ('c2i', 't2i'))
        if num_samples is None:
            raise ValueError('ShapesImageDataset needs num_samples (an int >= 1): the number of '
                             'images to render')
        _check_count('num_samples', num_samples)
        self.split, self.task, self.seed = split, task, int(seed)
        self.num_samples = int(num_samples)
        if task == 'c2i':
            self.specs = [spec_of_class(i % NUM_CLASSES) for i in range(self.num_samples)]
            self.prompts = None
        else:
            prompts = ShapesPromptDataset(split=split, kinds=kinds, num_prompts=self.num_samples,
                                          seed=seed)
            self.specs, self.prompts = prompts.specs, prompts.prompts
        self.metainfo = dict(task=task, classes=list(CLASS_NAMES), num_classes=NUM_CLASSES,
                             vocabulary=list(SHAPES_VOCABULARY))

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, i: int) -> dict:
        i = range(self.num_samples)[i]
        image = render(self.specs[i], item_rng(self.seed, self.split, i))
        if self.task == 'c2i':
            return {'image': image, 'class_id': i % NUM_CLASSES}
        return {'image': image, 'prompt': self.prompts[i]}
