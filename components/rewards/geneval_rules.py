"""GenEval's rules (Ghosh et al., arXiv 2310.11513; code djghosh13/geneval) as pure functions.

Everything here works on detector outputs (boxes, scores, labels, masks) and colour names, so
the rules are tested on hand-built detections (``tests/fixtures/geneval_detections.json``)
without a model. :mod:`vargo.components.rewards.geneval` runs the detector and the colour
classifier and calls these.

What the official ``evaluation/evaluate_images.py`` does, and these functions do the same:

1. **Detections kept** (:func:`select_detections`), per COCO class (GenEval's 80 object names,
   in the detector's label order): the class's detections sorted by score, highest first;
   those with ``score > threshold`` (0.3; 0.9 when the prompt's tag is ``counting``); the first
   ``max_objects`` (16); then greedy suppression of a detection whose box IoU with a kept one
   is ``>= max_overlap`` -- with the default ``max_overlap = 1`` nothing is suppressed. The IoU
   counts pixels inclusively (``x2 - x1 + 1``), as the official ``compute_iou``.
2. **A prompt's clauses** (:func:`evaluate_prompt`), in metadata order, each ``include`` entry
   ``{class, count[, color][, position]}``:

   * the first ``count`` kept detections of the class (the most confident); fewer than
     ``count``: wrong;
   * ``color``: the colour classifier names a colour for each of those ``count`` detections;
     fewer than ``count`` of them of the asked colour: wrong;
   * ``position: [relation, k]`` (checked only when the clause is still satisfied): the ``k``-th
     include clause's detections are the targets (wrong when that clause failed); every one of
     this clause's detections must stand in ``relation`` to every target
     (:func:`relative_position`);
   * each ``exclude`` entry ``{class, count}``: ``count`` or more kept detections of the class
     make the prompt wrong (counting prompts exclude ``N + 1``: exactly ``N`` is right).

   A prompt is right when every clause holds (the strict per-image score); the reason lists
   each failed clause.
3. **Relative position** (:func:`relative_position`): box centres ``c`` and sizes ``d``
   (width, height) of A and B, ``offset = c_A - c_B``, per axis ``revised = sign(offset) *
   max(|offset| - position_threshold * (d_A + d_B), 0)`` (``position_threshold = 0.1``); no
   relation when both ``|revised| < 1e-3``; else with ``(dx, dy) = revised / ||offset||``:
   ``dx < -0.5`` left of, ``dx > 0.5`` right of, ``dy < -0.5`` above, ``dy > 0.5`` below
   (image y grows downwards).
4. **Summary** (:func:`summarize`, as ``evaluation/summary_scores.py``): per tag (in order of
   first appearance) the fraction of correct images; the overall score is the mean of the tag
   fractions; also the fraction of correct images and of prompts with at least one correct
   image.

5. **Partial credit** (:func:`partial_credit`): not GenEval's metric but the dense reward Flow-GRPO
   (``reward-server/reward_server/gen_eval.py``) and STAGE (``src/utils/reward_geneval.py``)
   train with on GenEval-style prompts: the mean of per-part terms (count, colour, position),
   on *all* kept detections of a class and with exact counts. ``GenEvalReward(score='partial')``
   rewards with it; the strict correctness above stays its ``strict`` output and metrics.

The one difference: the official code sorts a class's scores with numpy's unstable argsort;
here the sort is stable (only exactly equal scores could be ordered differently).
"""
from __future__ import annotations

import json
import math
import os
from typing import Callable, NamedTuple, Optional, Sequence

import numpy as np

from .shapes_eval import relative_position as _shapes_relative_position

__all__ = ['GENEVAL_OBJECT_NAMES', 'MMDET_COCO_NAMES', 'GENEVAL_COLORS', 'COLOR_TEMPLATES',
           'GENEVAL_TAGS', 'RELATIONS', 'DEFAULT_SETTINGS', 'Detection', 'read_metadata',
           'check_metadata', 'check_settings', 'box_iou', 'select_detections',
           'relative_position', 'colour_requests', 'evaluate_prompt', 'partial_credit',
           'summarize', 'summary_lines']

#: GenEval's ``evaluation/object_names.txt``: the COCO detection classes in label order
GENEVAL_OBJECT_NAMES: tuple[str, ...] = (
    'person', 'bicycle', 'car', 'motorcycle', 'airplane', 'bus', 'train', 'truck', 'boat',
    'traffic light', 'fire hydrant', 'stop sign', 'parking meter', 'bench', 'bird', 'cat', 'dog',
    'horse', 'sheep', 'cow', 'elephant', 'bear', 'zebra', 'giraffe', 'backpack', 'umbrella',
    'handbag', 'tie', 'suitcase', 'frisbee', 'skis', 'snowboard', 'sports ball', 'kite',
    'baseball bat', 'baseball glove', 'skateboard', 'surfboard', 'tennis racket', 'bottle',
    'wine glass', 'cup', 'fork', 'knife', 'spoon', 'bowl', 'banana', 'apple', 'sandwich',
    'orange', 'broccoli', 'carrot', 'hot dog', 'pizza', 'donut', 'cake', 'chair', 'couch',
    'potted plant', 'bed', 'dining table', 'toilet', 'tv', 'laptop', 'computer mouse',
    'tv remote', 'computer keyboard', 'cell phone', 'microwave', 'oven', 'toaster', 'sink',
    'refrigerator', 'book', 'clock', 'vase', 'scissors', 'teddy bear', 'hair drier',
    'toothbrush')
#: the same classes as mmdet's ``CocoDataset.CLASSES`` (the detector configs' ``id2label``)
MMDET_COCO_NAMES: tuple[str, ...] = tuple(
    {'computer mouse': 'mouse', 'tv remote': 'remote', 'computer keyboard': 'keyboard'}.get(n, n)
    for n in GENEVAL_OBJECT_NAMES)
#: the colours of the colour classifier, in GenEval's order (argmax ties go to the first)
GENEVAL_COLORS: tuple[str, ...] = ('red', 'orange', 'yellow', 'green', 'blue', 'purple', 'pink',
                                   'brown', 'black', 'white')
#: the colour classifier's prompts for a detected object (``{colour}``, ``{object}``)
COLOR_TEMPLATES: tuple[str, ...] = ('a photo of a {colour} {object}',
                                    'a photo of a {colour}-colored {object}',
                                    'a photo of a {colour} object')
#: the tags of GenEval's prompt file, in its order
GENEVAL_TAGS: tuple[str, ...] = ('single_object', 'two_object', 'counting', 'colors', 'position',
                                 'color_attr')
RELATIONS: tuple[str, ...] = ('left of', 'right of', 'above', 'below')
#: the official defaults (``evaluate_images.py --options``)
DEFAULT_SETTINGS = dict(threshold=0.3, counting_threshold=0.9, max_objects=16, max_overlap=1.0,
                        position_threshold=0.1)


class Detection(NamedTuple):
    """A kept detection: ``box`` (x1, y1, x2, y2) in pixels, ``score``, optional ``mask``
    ([H, W] bool) and ``index`` (its row in the detector's output)."""
    box: tuple
    score: float
    mask: Optional[np.ndarray] = None
    index: int = -1


# ---- metadata ----------------------------------------------------------------------------------
def _bad(where: str, msg: str) -> ValueError:
    return ValueError(f'{where}: {msg}')


def check_metadata(meta, where: str = 'GenEval metadata') -> dict:
    """Validate one metadata entry (GenEval's ``evaluation_metadata.jsonl`` format); return it
    as a plain dict. Errors name the entry and the bad value."""
    if not isinstance(meta, dict):
        raise _bad(where, f'must be a JSON object with prompt, tag, include, got {meta!r}')
    prompt, tag = meta.get('prompt'), meta.get('tag')
    if not isinstance(prompt, str) or not prompt.strip():
        raise _bad(where, f'prompt={prompt!r} must be a non-empty string')
    if not isinstance(tag, str) or not tag:
        raise _bad(where, f'tag={tag!r} must be a non-empty string (GenEval\'s: '
                          f'{", ".join(GENEVAL_TAGS)})')
    include = meta.get('include')
    if not isinstance(include, list) or not include:
        raise _bad(where, f'include={include!r} must be a non-empty list of '
                          f'{{"class": ..., "count": ...}} clauses')
    exclude = meta.get('exclude', [])
    if not isinstance(exclude, list):
        raise _bad(where, f'exclude={exclude!r} must be a list of {{"class", "count"}} clauses')
    names = set(GENEVAL_OBJECT_NAMES)

    def clause(c, kind, i):
        w = f'{where} {kind}[{i}]'
        if not isinstance(c, dict):
            raise _bad(w, f'{c!r} must be an object with class and count')
        cls, count = c.get('class'), c.get('count')
        if cls not in names:
            raise _bad(w, f'class={cls!r} is not one of GenEval\'s 80 object names '
                          f'(evaluation/object_names.txt, e.g. "tv remote", "computer mouse")')
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise _bad(w, f'count={count!r} must be an integer >= 1')
        allowed = {'class', 'count'} | ({'color', 'position'} if kind == 'include' else set())
        extra = sorted(set(c) - allowed)
        if extra:
            raise _bad(w, f'unknown keys {extra}; {kind} clauses have {sorted(allowed)}')
        if 'color' in c and c['color'] not in GENEVAL_COLORS:
            raise _bad(w, f'color={c["color"]!r} is not one of {", ".join(GENEVAL_COLORS)}')
        if 'position' in c:
            pos = c['position']
            if (not isinstance(pos, (list, tuple)) or len(pos) != 2 or pos[0] not in RELATIONS
                    or isinstance(pos[1], bool) or not isinstance(pos[1], int)
                    or not 0 <= pos[1] < i):
                raise _bad(w, f'position={pos!r} must be [relation, k] with relation one of '
                              f'{", ".join(RELATIONS)} and k the index of an earlier include '
                              f'clause (0..{i - 1})')
        return dict(c)

    out = dict(meta)
    out['include'] = [clause(c, 'include', i) for i, c in enumerate(include)]
    out['exclude'] = [clause(c, 'exclude', i) for i, c in enumerate(exclude)]
    return out


def read_metadata(path: str) -> list[dict]:
    """The entries of a GenEval metadata file (JSON lines: ``prompt``, ``tag``, ``include``,
    optional ``exclude``), validated; blank lines are skipped. A prompt listed twice with
    different clauses is an error (the reward finds an image's clauses by its prompt)."""
    path = os.path.expanduser(str(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f'GenEval metadata file {path!r} does not exist; GenEval\'s own is '
            f'prompts/evaluation_metadata.jsonl of https://github.com/djghosh13/geneval (one '
            f'JSON object per line: prompt, tag, include, exclude)')
    entries: list[dict] = []
    seen: dict[str, int] = {}
    with open(path, encoding='utf-8') as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f'{path} line {n}'
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as e:
                raise _bad(where, f'is not JSON ({e.msg}); each line is one metadata object')
            meta = check_metadata(raw, where)
            first = seen.get(meta['prompt'])
            if first is not None:
                if _clauses(entries[first]) != _clauses(meta):
                    raise _bad(where, f'prompt {meta["prompt"]!r} is also on an earlier line '
                                      f'with other clauses; give each prompt one set of clauses')
                continue
            seen[meta['prompt']] = len(entries)
            entries.append(meta)
    if not entries:
        raise ValueError(f'GenEval metadata file {path} holds no entries')
    return entries


def _clauses(meta: dict) -> str:
    return json.dumps([meta['tag'], meta['include'], meta['exclude']], sort_keys=True)


def check_settings(settings: dict, owner: str = 'GenEval') -> dict:
    """The rule settings (:data:`DEFAULT_SETTINGS` keys) checked; unknown keys are errors."""
    out = dict(DEFAULT_SETTINGS)
    unknown = sorted(set(settings) - set(out))
    if unknown:
        raise ValueError(f'{owner}: unknown rule settings {unknown}; known: {sorted(out)}')
    out.update(settings)
    for key in ('threshold', 'counting_threshold', 'position_threshold'):
        v = out[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
            raise ValueError(f'{owner} {key}={v!r} must be a number in [0, 1) (official: '
                             f'{DEFAULT_SETTINGS[key]})')
    v = out['max_overlap']
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1:
        raise ValueError(f'{owner} max_overlap={v!r} must be in (0, 1] (1: no suppression, '
                         f'the official default)')
    v = out['max_objects']
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f'{owner} max_objects={v!r} must be an integer >= 1 (official: 16)')
    return out


# ---- detections ----------------------------------------------------------------------------------
def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of boxes (x1, y1, x2, y2) counting pixels inclusively (``x2 - x1 + 1``)."""
    def area(x1, y1, x2, y2):
        return max(x2 - x1 + 1, 0) * max(y2 - y1 + 1, 0)
    inter = area(max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3]))
    union = area(*a[:4]) + area(*b[:4]) - inter
    return inter / union if union else 0.0


def select_detections(boxes, scores, labels, masks=None, *, tag: str,
                      settings: Optional[dict] = None,
                      names: Sequence[str] = GENEVAL_OBJECT_NAMES) -> dict[str, list[Detection]]:
    """The detections GenEval keeps per class name (module docstring, item 1).

    Args:
        boxes: ``[N, 4]`` (x1, y1, x2, y2); scores ``[N]``; labels ``[N]`` int indices into
            ``names``; masks ``[N, H, W]`` bool or None.
        tag: the prompt's tag (``'counting'`` uses ``counting_threshold``).
        settings: rule settings (:data:`DEFAULT_SETTINGS`).

    Returns:
        ``{class name: [Detection, ...]}`` most confident first; classes without a kept
        detection are absent.
    """
    s = check_settings(settings or {})
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    if not len(boxes) == len(scores) == len(labels):
        raise ValueError(f'select_detections: {len(boxes)} boxes, {len(scores)} scores and '
                         f'{len(labels)} labels; give one of each per detection')
    bad = sorted({int(v) for v in labels if not 0 <= int(v) < len(names)})
    if bad:
        raise ValueError(f'select_detections: labels {bad[:5]} outside [0, {len(names)})')
    threshold = s['counting_threshold'] if tag == 'counting' else s['threshold']
    out: dict[str, list[Detection]] = {}
    for k, name in enumerate(names):
        idx = np.nonzero(labels == k)[0]
        if not len(idx):
            continue
        idx = idx[np.argsort(-scores[idx], kind='stable')]
        idx = idx[scores[idx] > threshold][:s['max_objects']].tolist()
        kept = []
        while idx:
            best = idx.pop(0)
            kept.append(best)
            if s['max_overlap'] < 1:
                idx = [j for j in idx if box_iou(boxes[best], boxes[j]) < s['max_overlap']]
        if kept:
            out[name] = [Detection(tuple(float(v) for v in boxes[j]), float(scores[j]),
                                   None if masks is None else masks[j], int(j)) for j in kept]
    return out


def relative_position(box_a: Sequence[float], box_b: Sequence[float],
                      position_threshold: float = 0.1) -> set[str]:
    """The relations of box A to box B (module docstring, item 3): the rule ShapesEval already
    applies (:func:`vargo.components.rewards.shapes_eval.relative_position`), on the first four
    entries (x0, y0, x1, y1) of each box."""
    return _shapes_relative_position(tuple(box_a[:4]), tuple(box_b[:4]), position_threshold)


# ---- prompts -------------------------------------------------------------------------------------
def colour_requests(detected: dict[str, list[Detection]], meta: dict
                    ) -> list[tuple[str, list[Detection]]]:
    """The ``(class, detections)`` whose colours :func:`evaluate_prompt` will ask for: every
    colour clause with enough detections (the colour classifier runs on nothing else)."""
    out = []
    for req in meta['include']:
        found = detected.get(req['class'], [])[:req['count']]
        if 'color' in req and len(found) >= req['count']:
            out.append((req['class'], found))
    return out


def evaluate_prompt(detected: dict[str, list[Detection]], meta: dict,
                    colours_of: Callable[[str, list[Detection]], list[str]],
                    position_threshold: float = 0.1) -> tuple[bool, str]:
    """GenEval's correctness of one image (module docstring, item 2).

    Args:
        detected: :func:`select_detections`'s output.
        meta: the prompt's metadata (:func:`check_metadata`).
        colours_of: ``(class name, detections) -> [colour name per detection]``.
        position_threshold: the relative-position margin.

    Returns:
        ``(correct, reason)``: the reason names every failed clause, one per line ('' if right).
    """
    correct = True
    reasons: list[str] = []
    groups: list[Optional[list[Detection]]] = []
    for req in meta['include']:
        cls, count = req['class'], req['count']
        ok = True
        found = detected.get(cls, [])[:count]
        if len(found) < count:
            ok = False
            reasons.append(f'{cls}: asked for {count}, detected {len(found)}')
        else:
            if 'color' in req:
                colours = list(colours_of(cls, found))
                hits = colours.count(req['color'])
                if hits < count:
                    ok = False
                    seen = ', '.join(f'{colours.count(c)} {c}' for c in GENEVAL_COLORS
                                     if c in colours)
                    reasons.append(f'{cls}: asked for {count} {req["color"]}, classified {seen}')
            if 'position' in req and ok:
                relation, target = req['position']
                targets = groups[target]
                if targets is None:
                    ok = False
                    reasons.append(f'{cls}: no {meta["include"][target]["class"]} to be '
                                   f'{relation}')
                else:
                    for det in found:
                        for t in targets:
                            rel = relative_position(det.box, t.box, position_threshold)
                            if relation not in rel:
                                ok = False
                                got = ' and '.join(sorted(rel)) or 'no relation'
                                reasons.append(f'{cls}: asked to be {relation} the '
                                               f'{meta["include"][target]["class"]}, found '
                                               f'{got}')
                                break
                        if not ok:
                            break
        correct = correct and ok
        groups.append(found if ok else None)
    for req in meta['exclude']:
        n = len(detected.get(req['class'], []))
        if n >= req['count']:
            correct = False
            reasons.append(f'{req["class"]}: asked for fewer than {req["count"]}, detected {n}')
    return correct, '\n'.join(reasons)


def partial_credit(detected: dict[str, list[Detection]], meta: dict,
                   colours_of: Callable[[str, list[Detection]], list[str]],
                   position_threshold: float = 0.1) -> float:
    """The partial-credit GenEval reward that Flow-GRPO and STAGE train with (their
    ``evaluate_reward``; module docstring, item 5): the mean of one term per checked part.

    Per ``include`` clause with ``n = count`` and ``f`` = every kept detection of its class:

    * count: ``1 - |n - len(f)| / n`` (may be negative when more than ``2n`` are found);
    * when ``len(f) != n``: one more term 0 if the clause asks for a colour or a position;
    * else colour: ``1 - |n - hits| / n`` with ``hits`` the detections classified in the colour;
    * else position (only while the clause still holds): 0 if the target clause failed; else
      0 for the first (detection, target) pair not in the relation, and then 1 in any case --
      a failed relation contributes 0 and 1 (half credit), as the official code does.

    ``exclude`` clauses are not scored. No clause: 0.
    """
    terms: list[float] = []
    groups: list[Optional[list[Detection]]] = []
    for req in meta['include']:
        cls, count = req['class'], req['count']
        found = detected.get(cls, [])
        ok = len(found) == count
        terms.append(1.0 - abs(count - len(found)) / count)
        if not ok:
            if 'color' in req or 'position' in req:
                terms.append(0.0)
        else:
            if 'color' in req:
                hits = list(colours_of(cls, found)).count(req['color'])
                terms.append(1.0 - abs(count - hits) / count)
                ok = hits == count
            if 'position' in req and ok:
                relation, target = req['position']
                targets = groups[target]
                if targets is None:
                    ok = False
                    terms.append(0.0)
                else:
                    for det in found:
                        if any(relation not in relative_position(det.box, t.box,
                                                                 position_threshold)
                               for t in targets):
                            ok = False
                            terms.append(0.0)
                            break
                    terms.append(1.0)
        groups.append(found if ok else None)
    return sum(terms) / len(terms) if terms else 0.0


# ---- summary -------------------------------------------------------------------------------------
def summarize(records: Sequence[tuple[str, str, bool]]) -> dict[str, float]:
    """GenEval's summary of ``(prompt, tag, correct)`` per image (module docstring, item 4).

    Returns a flat dict of floats: ``<tag>`` (fraction correct), ``<tag>/correct``,
    ``<tag>/images`` per tag in order of first appearance, then ``overall`` (mean of the tag
    fractions), ``correct_images``, ``correct_prompts``, ``num_images``, ``num_prompts``.
    """
    if not records:
        raise ValueError('summarize: no images')
    tags: dict[str, list[int]] = {}
    prompts: dict[str, bool] = {}
    for prompt, tag, ok in records:
        tags.setdefault(tag, [0, 0])
        tags[tag][0] += int(bool(ok))
        tags[tag][1] += 1
        prompts[prompt] = prompts.get(prompt, False) or bool(ok)
    out: dict[str, float] = {}
    for tag, (right, n) in tags.items():
        out[tag] = right / n
        out[f'{tag}/correct'] = float(right)
        out[f'{tag}/images'] = float(n)
    out['overall'] = float(np.mean([right / n for right, n in tags.values()]))
    out['correct_images'] = sum(bool(r[2]) for r in records) / len(records)
    out['correct_prompts'] = sum(prompts.values()) / len(prompts)
    out['num_images'] = float(len(records))
    out['num_prompts'] = float(len(prompts))
    return out


def summary_lines(metrics: dict, prefix: str = '', title: str = 'GenEval') -> list[str]:
    """GenEval's summary table (as ``summary_scores.py`` prints it) from :func:`summarize`'s
    metrics, possibly under ``prefix`` (``'<head>/'`` in tools/eval.py's results)."""
    def get(key):
        v = metrics.get(prefix + key)
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else v
    tags = [k[len(prefix):-len('/images')] for k in metrics
            if k.startswith(prefix) and k.endswith('/images')]
    if get('overall') is None or not tags:
        return []
    lines = [f'{title} summary', '=' * (len(title) + 8),
             f'Total images: {int(get("num_images"))}',
             f'Total prompts: {int(get("num_prompts"))}',
             f'% correct images: {get("correct_images"):.2%}',
             f'% correct prompts: {get("correct_prompts"):.2%}', '',
             'Task breakdown', '==============']
    for tag in tags:
        lines.append(f'{tag:<16} = {get(tag):.2%} ({int(get(tag + "/correct"))} / '
                     f'{int(get(tag + "/images"))})')
    lines += ['', f'Overall score (avg. over tasks): {get("overall"):.5f}']
    return lines
