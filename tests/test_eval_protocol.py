"""The evaluation protocol (vargo.core.eval_protocol) that tools/eval.py writes into every
eval.json and the tools print under their tables: the reference files' sha256 (equal to the
file's, changed with the file), what is compared, the printed block and the report's."""
import hashlib
import json
import os

import numpy as np

from conftest import ROOT, load_tool, run_python
from vargo.core import eval_protocol
from vargo.core.run_report import build_report

eval_tool = load_tool('eval')


def _stats(path, shift=0.0):
    np.savez(path, mu=np.zeros(128) + shift, sigma=np.eye(128))
    return str(path)


def _sha(path):
    return hashlib.sha256(open(path, 'rb').read()).hexdigest()


def test_reference_statistics_hash_is_the_files_and_follows_it(tmp_path):
    stats = _stats(tmp_path / 'real.npz')
    fid = eval_tool.Fidelity(dict(extractor='vargo-shapes', reference_stats=stats,
                                  reference_stats_prefix=''), ['train'])
    first = fid.protocol()
    ref = first['references']['train']['fid_statistics']
    assert ref == dict(path=stats, sha256=_sha(stats), prefix='')
    assert first['extractor']['name'] == 'vargo-shapes' and first['metrics'] == ['fid']
    _stats(tmp_path / 'real.npz', shift=1.0)               # same name, other statistics
    changed = fid.protocol()['references']['train']['fid_statistics']['sha256']
    assert changed == _sha(stats) and changed != ref['sha256']
    assert eval_protocol.differences([first, fid.protocol()]) == \
        ['references.train.fid_statistics.sha256']


def _rewrite_keeping_size_and_mtime(path, data, *, replace):
    stamp = os.stat(path).st_mtime_ns
    if replace:                                    # a new file renamed over the old: new inode
        with open(f'{path}.tmp', 'wb') as f:
            f.write(data)
        os.replace(f'{path}.tmp', path)
    else:
        with open(path, 'wb') as f:
            f.write(data)
    os.utime(path, ns=(stamp, stamp))


def test_file_hash_follows_a_rewrite_with_the_same_size_and_mtime(tmp_path, monkeypatch):
    """A small file is hashed on every call; a large one is cached by size, mtime, ctime and
    inode, so a checkpoint replaced atomically is re-hashed even with a copied mtime."""
    path = str(tmp_path / 'f.bin')
    with open(path, 'wb') as f:
        f.write(b'a' * 4096)
    first = eval_protocol.file_sha256(path)
    _rewrite_keeping_size_and_mtime(path, b'b' * 4096, replace=False)
    assert eval_protocol.file_sha256(path) == _sha(path) != first

    monkeypatch.setattr(eval_protocol, 'SHA256_CACHE_MIN_BYTES', 0)       # every file "large"
    cached = eval_protocol.file_sha256(path)
    _rewrite_keeping_size_and_mtime(path, b'c' * 4096, replace=True)
    assert eval_protocol.file_sha256(path) == _sha(path) != cached


def test_shapes_benchmark_protocol_names_the_shipped_files():
    from vargo.components.benchmarks import shapes_features as sf
    p = eval_tool.Fidelity(dict(extractor='vargo-shapes', task='c2i'), ['train']).protocol()
    weights, ref = p['extractor']['weights'], p['references']['train']
    assert weights['path'] == os.path.relpath(sf.DEFAULT_WEIGHTS_PATH, ROOT)  # repo-relative
    assert weights['sha256'] == _sha(sf.DEFAULT_WEIGHTS_PATH)
    assert ref['fid_statistics']['sha256'] == _sha(sf.DEFAULT_STATS_PATH)
    assert ref['fid_statistics']['prefix'] == 'c2i_train_'
    assert ref['real_images']['dataset']['seed'] == sf.REFERENCE_SEED
    assert p['metrics'] == ['fid', 'kid', 'prc'] and p['settings']['kid_subsets'] == 100


def test_reference_image_folder_listing_hash(tmp_path):
    (tmp_path / 'a.png').write_bytes(b'x' * 10)
    before = eval_protocol.folder_record(str(tmp_path))
    (tmp_path / 'b.png').write_bytes(b'y')
    after = eval_protocol.folder_record(str(tmp_path))
    assert before['files'] == 1 and after['files'] == 2
    assert before['listing_sha256'] != after['listing_sha256']


def _protocol(**sampler):
    return dict(version=1, sampler=dict(type='ARSampler', cfg_scale=2.0, top_k=0, **sampler),
                sampling=dict(seed=0, samples_per_condition=32, max_conditions=None,
                              batch_conditions=16),
                splits=dict(train=dict(type='ShapesClassDataset', split='train')),
                scored_heads=dict(shapes='ShapesEvalReward'), metric_heads={}, fidelity=None,
                vargo_commit='abc')


def test_what_is_compared():
    base = _protocol(logprob_cfg='rollout')
    # the commit and log-prob-only settings do not make evaluations incomparable
    same = dict(_protocol(logprob_cfg='none'), vargo_commit='def')
    assert eval_protocol.identity(base) == eval_protocol.identity(same)
    other = _protocol(logprob_cfg='rollout', temperature=0.9)
    other['sampling']['samples_per_condition'] = 8
    assert eval_protocol.differences([base, same, other]) == [
        'sampler.temperature', 'sampling.samples_per_condition']
    groups, missing = eval_protocol.group_protocols(
        [('a0', base), ('a1', same), ('b0', other), ('c0', None)])
    assert [labels for _, labels in groups] == [['a0', 'a1'], ['b0']] and missing == ['c0']


def test_files_compare_by_content_not_location(tmp_path):
    """The same weights reached from two checkouts are one protocol; other bytes are not;
    packed decode weights (a summation order) do not split protocols either."""
    def with_files(where, digest, **sampler):
        p = _protocol(**sampler)
        p['fidelity'] = dict(extractor=dict(name='x', weights=dict(path=f'{where}/w.safetensors',
                                                                   sha256=digest)),
                             references=dict(train=dict(fid_statistics=dict(
                                 path=f'{where}/stats.npz', sha256='s1')),
                                 images=dict(folder=f'{where}/real', files=3,
                                             listing_sha256='l1')))
        return p
    a = with_files('/work/a', 'w1')
    b = with_files('/elsewhere/b', 'w1', packed_weights=False)
    assert eval_protocol.identity(a) == eval_protocol.identity(b)
    c = with_files('/work/a', 'w2')
    assert eval_protocol.differences([a, c]) == ['fidelity.extractor.weights.sha256']
    # a path without a hash beside it is still compared
    d, e = _protocol(), _protocol()
    d['splits']['train']['path'], e['splits']['train']['path'] = 'x.json', 'y.json'
    assert eval_protocol.differences([d, e]) == ['splits.train.path']


def test_paths_through_a_symlinked_package_are_shown_repository_relative(tmp_path):
    link = tmp_path / 'shim'
    link.symlink_to(os.path.join(eval_protocol.REPO_ROOT, 'components'))
    shown = eval_protocol.shown_path(str(link / 'benchmarks' / 'weights' / 'x.safetensors'))
    assert shown == os.path.join('components', 'benchmarks', 'weights', 'x.safetensors')


def test_printed_block_and_report(tmp_path):
    stats = _stats(tmp_path / 'real.npz')
    p = _protocol()
    p['fidelity'] = eval_tool.Fidelity(dict(extractor='vargo-shapes', reference_stats=stats),
                                       ['train']).protocol()
    text = '\n'.join(eval_protocol.format_protocol(p))
    for part in ('sampler ARSampler', 'cfg_scale=2.0', 'seed 0, 32 samples per condition',
                 'split train: ShapesClassDataset', f'sha256 {_sha(stats)}', stats,
                 'vargo commit abc'):
        assert part in text, part
    os.makedirs(tmp_path / 'run' / 'eval')
    (tmp_path / 'run' / 'eval' / 'eval.json').write_text(json.dumps(
        dict(results=dict(train={'shapes/strict': 0.5}), protocol=p)))
    (tmp_path / 'run' / 'eval_old').mkdir()
    (tmp_path / 'run' / 'eval_old' / 'eval.json').write_text(json.dumps(
        dict(results=dict(train={'shapes/strict': 0.4}))))
    page = build_report(str(tmp_path / 'run'))
    assert f'sha256 {_sha(stats)}' in page and 'results/train/shapes/strict' in page
    assert 'protocol/' not in page                          # not flattened into the table
    assert 'evaluation protocol: not recorded' in page      # the older file says so


def test_eval_tool_writes_and_prints_the_protocol(tmp_path):
    cfg = tmp_path / 'tiny.py'
    cfg.write_text(f"_base_ = [{os.path.join(ROOT, 'configs/grpo/llamagen-tiny_grpo_jpeg.py')!r}]\n"
                   "eval_cfg = dict(splits=dict(train=dict(type='ClassConditionDataset', "
                   "num_classes=2)), samples_per_condition=2)\n")
    proc = run_python('tools/eval.py', str(cfg), '--out', str(tmp_path / 'out'),
                      '--cfg-scale', '1.5', '--seed', '3', env={'OMP_NUM_THREADS': '1'})
    record = json.loads((tmp_path / 'out' / 'eval.json').read_text())
    p = record['protocol']
    assert p['sampler']['type'] == 'ARSampler' and p['sampler']['cfg_scale'] == 1.5
    assert {'temperature', 'top_k', 'top_p'} <= set(p['sampler'])
    assert p['sampling'] == dict(seed=3, samples_per_condition=2, max_conditions=None,
                                 batch_conditions=16)
    assert p['splits'] == dict(train=dict(type='ClassConditionDataset', num_classes=2))
    assert p['scored_heads'] == dict(jpeg='JpegCompressibilityReward')
    assert p['vargo_commit'] is None or len(p['vargo_commit'].split('+')[0]) == 40
    assert set(record['results']['train']) >= {'jpeg/mean', 'num_samples'}   # unchanged
    table, _, block = proc.stdout.partition('evaluation protocol:')
    assert 'jpeg/mean' in table and 'sampler ARSampler' in block and 'cfg_scale=1.5' in block
