"""Sharded training (FSDP2, core/sharding.py) on the tiny Janus, 2 CPU processes (gloo).

One module fixture launches every run, concurrently where they do not depend on each other:

* ``single``: one process, the tiny Janus STAGE/JPEG config, 2 iterations, global batch 8;
* ``sharded``: 2 processes sharding it (fp32), 4 samples per rank (the same global batch);
* ``resumed_sharded`` / ``resumed_single``: the sharded run's ``iter_1.pth`` resumed on 2
  processes and on one;
* ``switches``: 2 processes: the gradients of one teacher-forced evaluation unsharded, sharded
  with activation checkpointing, and sharded in bf16; then one iteration of the shipped settings
  (``configs/_base_/sharding/fsdp_bf16.py``: bf16 and activation checkpointing).

All run in one subprocess that imports torch, MMEngine, transformers and vargo once and forks
every rank of every run from there (9 processes would otherwise pay ~5 CPU-s of imports each);
it skips MMEngine's yapf formatting of the config text (~2 CPU-s a call, six calls a run) and
records every rank's loss and gradient norm per iteration.
"""
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, load_tool

FP32 = os.path.join(ROOT, 'tests', 'configs', 'janus-tiny_fsdp.py')
BF16 = os.path.join(ROOT, 'tests', 'configs', 'janus-tiny_fsdp-bf16.py')
TOY = os.path.join(ROOT, 'tests', 'configs', 'toy_grpo.py')
LR = 3e-4   # the tiny config's AdamW learning rate
COMMON = ['train_cfg.max_iters=2', 'default_hooks.checkpoint.interval=1',
          'default_hooks.image_grid=None', 'default_hooks.curves=None',
          'default_hooks.report=None']

_RUNS = r'''
# Runs every job of a JSON spec, phase by phase, as processes forked from this one after the
# imports (each rank of a job is a process with torchrun's environment), so the imports are paid
# once, not once per process. Exit 1 with the logs of the jobs that failed.
import json, os, signal, socket, sys, traceback
import mmengine.config.config as mmengine_config
mmengine_config.FormatCode = lambda text, **kwargs: (text, False)   # yapf: ~2 CPU-s a call
from mmengine.hooks import Hook
import torch
import vargo.core.runner as vargo_runner
from vargo.core.registry import ALL_REGISTRIES, HOOKS
from vargo.core.rng import BatchRNG
from vargo.core.sharding import VargoFSDP
from vargo.core.types import Conditions
from vargo.core.validation import build_model
import transformers.models.janus.modeling_janus  # noqa: F401
for registry in ALL_REGISTRIES.values():
    registry.import_from_location()
spec = json.load(open(sys.argv[1]))
sys.path.insert(0, os.path.join(spec['root'], 'tools'))
import train


@HOOKS.register_module(force=True)
class RecordLossHook(Hook):
    # every rank's loss and gradient norm per iteration, to <work_dir>/loss.rank<r>.jsonl
    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        grad_norm = runner.message_hub.get_scalar('train/grad_norm').current()
        with open(os.path.join(runner.work_dir, f'loss.rank{os.environ["RANK"]}.jsonl'),
                  'a') as f:
            f.write(json.dumps({'iter': runner.iter + 1, 'loss': outputs['loss'],
                                'grad_norm': float(grad_norm)}) + '\n')


_load = vargo_runner.load_config


def load_config(path, options=None):
    cfg = _load(path, options)
    cfg.custom_hooks = list(cfg.get('custom_hooks') or []) + [dict(type='RecordLossHook')]
    return cfg


vargo_runner.load_config = load_config


def switches(config, out):
    # gradients of one teacher-forced evaluation: one process, sharded with activation
    # checkpointing, sharded in bf16; then one training iteration of ``config``
    options = {'train_cfg.max_iters': 1, 'train_cfg.samples_per_rank': 4,
               'default_hooks.checkpoint.interval': 1, 'default_hooks.image_grid': None,
               'default_hooks.curves': None, 'default_hooks.report': None}
    cfg = vargo_runner.prepare_config(load_config(config, options), config_path=config,
                                      work_dir=out, launcher='pytorch')

    def build():
        torch.manual_seed(0)
        return build_model(cfg)

    algo = build()
    # the same samples on both ranks: the sharded gradient (the mean over the ranks) is the
    # gradient of one process
    rollout = algo.generate(Conditions(prompts=['a red cat']),
                            BatchRNG(3, 0, algo.group_size, rank=0, world_size=1))

    def gradients(model):
        ev = model.policy.evaluate(rollout, spec=model.sampler.logprob_spec())
        weights = torch.linspace(-1, 1, ev.logp.numel()).view_as(ev.logp)
        ((ev.logp * weights).sum() + ev.entropy.mean()).backward()
        grads = {n: p.grad.full_tensor() if hasattr(p.grad, 'full_tensor') else p.grad.clone()
                 for n, p in model.policy.named_parameters() if p.requires_grad}
        model.policy.zero_grad(set_to_none=True)
        return ev.logp.detach(), grads

    logp, plain = gradients(algo)
    VargoFSDP(algo, activation_checkpointing=True)
    # sampled sharded (the policy gathered for the whole rollout): the same tokens, and the
    # units sharded again afterwards
    again = algo.generate(Conditions(prompts=['a red cat']),
                          BatchRNG(3, 0, algo.group_size, rank=0, world_size=1))
    same_rollout = bool(torch.equal(again.actions, rollout.actions))
    resharded = all(type(p).__name__ == 'DTensor' for p in algo.policy.parameters()
                    if p.requires_grad)
    # the frozen reference is sharded as the policy's units are (not a whole copy per rank)
    trainable = {n for n, p in algo.policy.named_parameters() if p.requires_grad}
    ref_params = dict(algo.reference.named_parameters())
    resharded = resharded and bool(trainable) and trainable <= ref_params.keys() and all(
        type(ref_params[n]).__name__ == 'DTensor' for n in trainable)
    logp_ac, checkpointed = gradients(algo)
    bf16_algo = build()
    VargoFSDP(bf16_algo, mixed_precision='bf16', activation_checkpointing=True)
    logp_bf16, bf16 = gradients(bf16_algo)
    if torch.distributed.get_rank() == 0:
        os.makedirs(out, exist_ok=True)
        torch.save({'plain': plain, 'checkpointed': checkpointed, 'bf16': bf16, 'logp': logp,
                    'logp_ac': logp_ac, 'logp_bf16': logp_bf16, 'same_rollout': same_rollout,
                    'resharded': resharded}, os.path.join(out, 'grads.pt'))
    vargo_runner.build_runner(cfg).train()
    return 0


def run(job, rank, port, log):
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank))
    if job['nproc'] > 1:
        os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port),
                          WORLD_SIZE=str(job['nproc']), LOCAL_WORLD_SIZE=str(job['nproc']))
    try:
        code = switches(*job['argv']) if job['kind'] == 'switches' else train.main(job['argv'])
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


for phase in spec['phases']:
    children = {}
    for job in phase:
        with socket.socket() as s:
            s.bind(('127.0.0.1', 0))
            port = s.getsockname()[1]
        for rank in range(job['nproc']):
            log = os.path.join(spec['logs'], f'{job["name"]}.rank{rank}.log')
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                run(job, rank, port, log)
            children[pid] = log
    failed = []
    while children:
        pid, status = os.wait()
        log = children.pop(pid, None)
        if log is not None and status:
            failed.append(log)
            for other in children:      # its peers would wait for it in a collective
                os.kill(other, signal.SIGKILL)
    if failed:
        for log in failed:
            print(f'== {log} ==\n' + open(log).read()[-4000:])
        sys.exit(1)
'''


def _train_job(name, work_dir, nproc, per_rank, resume=None):
    argv = [FP32, '--work-dir', str(work_dir)]
    if nproc > 1:
        argv += ['--launcher', 'pytorch']
    if resume:
        argv += ['--resume', str(resume)]
    argv += ['--cfg-options', *COMMON, f'train_cfg.samples_per_rank={per_rank}']
    return dict(name=name, kind='train', nproc=nproc, argv=argv)


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('sharded')
    dirs = {name: tmp / name for name in ('single', 'sharded', 'resumed_sharded',
                                          'resumed_single', 'switches')}
    first = dirs['sharded'] / 'iter_1.pth'
    phases = [
        [_train_job('single', dirs['single'], 1, 8), _train_job('sharded', dirs['sharded'], 2, 4)],
        [_train_job('resumed_sharded', dirs['resumed_sharded'], 2, 4, resume=first),
         _train_job('resumed_single', dirs['resumed_single'], 1, 8, resume=first),
         dict(name='switches', kind='switches', nproc=2, argv=[BF16, str(dirs['switches'])])],
    ]
    (tmp / 'logs').mkdir()
    (tmp / 'spec.json').write_text(json.dumps(dict(root=ROOT, logs=str(tmp / 'logs'),
                                                   phases=phases)))
    (tmp / 'runs.py').write_text(_RUNS)
    env = dict(os.environ, OMP_NUM_THREADS='1', HF_HUB_OFFLINE='1')
    env['PYTHONPATH'] = os.path.join(ROOT, 'tests') + os.pathsep + env.get('PYTHONPATH', '')
    # a session of its own: a hung run is ended with every rank forked from it
    proc = subprocess.Popen([sys.executable, str(tmp / 'runs.py'), str(tmp / 'spec.json')],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    assert proc.returncode == 0, out[-8000:] + err[-3000:]
    return dirs


def _ckpt(path):
    return torch.load(path, map_location='cpu', weights_only=True)


def _losses(work_dir, rank):
    with open(work_dir / f'loss.rank{rank}.jsonl') as f:
        return [json.loads(line) for line in f]


def _assert_same_state(a, b, atol=1e-6, rtol=1e-5):
    assert a['state_dict'].keys() == b['state_dict'].keys()
    for k in a['state_dict']:
        torch.testing.assert_close(a['state_dict'][k], b['state_dict'][k], atol=atol, rtol=rtol,
                                   msg=k)
    oa, ob = a['optimizer'], b['optimizer']
    assert oa['param_groups'] == ob['param_groups']
    assert oa['state'].keys() == ob['state'].keys()
    for i in oa['state']:
        for k in oa['state'][i]:
            torch.testing.assert_close(oa['state'][i][k], ob['state'][i][k], atol=atol,
                                       rtol=rtol, msg=f'optimizer state {i} {k}')


@pytest.mark.distributed
def test_sharded_run_equals_single_process(runs):
    single, sharded = _ckpt(runs['single'] / 'iter_2.pth'), _ckpt(runs['sharded'] / 'iter_2.pth')
    # the file of a sharded run is a single-process checkpoint: full tensors, same keys
    assert sharded['vargo_world_size'] == 2 and single['vargo_world_size'] == 1
    assert all(type(v) is torch.Tensor for v in sharded['state_dict'].values())
    _assert_same_state(single, sharded)
    start = _ckpt(runs['single'] / 'iter_1.pth')['state_dict']
    moved = max((single['state_dict'][k] - start[k]).abs().max().item() for k in start)
    assert moved > LR / 2   # the second iteration trained
    # the loss each rank logs is its share (rows of this rank x world size / all rows): the
    # mean over the ranks is the single-process loss; the gradient norm is global
    one = _losses(runs['single'], 0)
    two = [_losses(runs['sharded'], r) for r in (0, 1)]
    assert [e['iter'] for e in one] == [e['iter'] for e in two[0]] == [1, 2]
    for it in range(2):
        mean = (two[0][it]['loss'] + two[1][it]['loss']) / 2
        assert mean == pytest.approx(one[it]['loss'], rel=1e-4, abs=1e-7)
        for rank in (0, 1):
            assert two[rank][it]['grad_norm'] == pytest.approx(one[it]['grad_norm'], rel=1e-5)


@pytest.mark.distributed
def test_sharded_checkpoint_resumes_sharded_and_in_one_process(runs):
    full = _ckpt(runs['sharded'] / 'iter_2.pth')
    resumed = _ckpt(runs['resumed_sharded'] / 'iter_2.pth')
    _assert_same_state(full, resumed, atol=0, rtol=0)          # bit-exact on 2 processes
    _assert_same_state(full, _ckpt(runs['resumed_single'] / 'iter_2.pth'))
    for name in ('resumed_sharded', 'resumed_single'):
        assert [e['iter'] for e in _losses(runs[name], 0)] == [2]


@pytest.mark.distributed
def test_activation_checkpointing_and_bf16_switches(runs):
    out = torch.load(runs['switches'] / 'grads.pt', weights_only=True)
    assert out['same_rollout'] and out['resharded']
    plain, checkpointed, bf16 = out['plain'], out['checkpointed'], out['bf16']
    assert plain.keys() == checkpointed.keys() == bf16.keys() and len(plain) == 20
    torch.testing.assert_close(out['logp_ac'], out['logp'], atol=1e-6, rtol=1e-6)
    for k in plain:
        assert plain[k].abs().max() > 0, k
        torch.testing.assert_close(checkpointed[k], plain[k], atol=1e-7, rtol=1e-5, msg=k)
        assert bf16[k].dtype == torch.float32 and torch.isfinite(bf16[k]).all(), k
        cos = torch.nn.functional.cosine_similarity(bf16[k].flatten(), plain[k].flatten(), dim=0)
        assert cos > 0.999, (k, float(cos))
    assert (out['logp_bf16'] - out['logp']).abs().max() < 0.01
    # one iteration of the shipped settings (bf16, activation checkpointing): fp32 weights,
    # each moved by at most one AdamW step from where the fp32 sharded run started
    ckpt = _ckpt(runs['switches'] / 'iter_1.pth')
    start = _ckpt(runs['single'] / 'iter_1.pth')['state_dict']
    assert ckpt['state_dict'].keys() == start.keys()
    for k, v in ckpt['state_dict'].items():
        assert v.dtype == start[k].dtype and torch.isfinite(v).all(), k
        assert (v - start[k]).abs().max() <= 2 * LR + 1e-6, k


def test_unshardable_policy_and_bad_settings_are_one_line_errors(capsys):
    train = load_tool('train')
    # the settings are checked before the policy (the toy policy names no shard units)
    cases = [
        ([], 'ToyPolicy names no shard units (ToyPolicy.shard_units() returns none), so it '
             'cannot be sharded'),
        (['model_wrapper_cfg.mixed_precision=fp16'],
         "model_wrapper_cfg.mixed_precision='fp16': must be None (fp32) or 'bf16'"),
        (['model_wrapper_cfg.activation_checkpointing=1'],
         'model_wrapper_cfg.activation_checkpointing=1: must be True or False'),
        (['model_wrapper_cfg.cpu_offload=True'],
         "VargoFSDP got unknown setting(s) ['cpu_offload']"),
    ]
    for options, expected in cases:
        argv = [TOY, '--dry-run', '--cfg-options', 'model_wrapper_cfg.type=VargoFSDP', *options]
        assert train.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert expected in err and '\n' not in err, err
    # --amp (GPU only) in a sharded run: bf16 is the wrapper's setting
    from vargo.core.registry import ConfigError
    from vargo.core.sharding import check_model_wrapper_cfg
    with pytest.raises(ConfigError, match=r"^--amp with model_wrapper_cfg VargoFSDP: .*drop --amp"):
        check_model_wrapper_cfg(dict(type='VargoFSDP', mixed_precision='bf16'), None, amp=True)


class _Policy(torch.nn.Module):
    """Three linear layers; ``units(self)`` gives its shard units."""

    def __init__(self, units):
        super().__init__()
        self.a, self.b, self.head = (torch.nn.Linear(2, 2) for _ in range(3))
        self._units = units

    def shard_units(self):
        return self._units(self)


def test_shard_units_are_checked():
    from vargo.core.registry import ConfigError
    from vargo.core.sharding import check_shard_units
    policy = _Policy(lambda p: [p.a, p.b, p.head])
    assert check_shard_units(policy) == [policy.a, policy.b, policy.head]
    frozen_head = _Policy(lambda p: [p.a, p.b])
    frozen_head.head.requires_grad_(False)
    assert len(check_shard_units(frozen_head)) == 2    # frozen parts may stay whole
    cases = [
        (_Policy(lambda p: [p.a]), 'trainable parameter(s) of _Policy in no shard unit '
                                   '(b.weight, b.bias, head.weight, head.bias)'),
        (_Policy(lambda p: [p, p.a]), "shard unit '(the policy itself)' of _Policy holds other "
                                      "units (a)"),
        (_Policy(lambda p: [torch.nn.Linear(1, 1)]), 'returned a Linear that is not a '
                                                     'sub-module of the policy'),
        (_Policy(lambda p: [p.a, p.a]), 'lists a module twice'),
    ]
    tied = _Policy(lambda p: [p.a, p.b])
    tied.head.requires_grad_(False)
    tied.head.weight = tied.a.weight
    cases.append((tied, "head.weight of _Policy is the same tensor as a parameter of shard unit "
                        "'a' (tied weights)"))
    for policy, expected in cases:
        with pytest.raises(ConfigError) as err:
            check_shard_units(policy)
        assert expected in str(err.value) and '\n' not in str(err.value), str(err.value)


def test_dry_run_reports_the_share_of_a_rank(capsys):
    # tiny Janus: 90432 trained parameters, all in the shard units, 1.17 M frozen outside them:
    # (weights + reference units + grads + 2 moments) x 4 B split, the frozen parts whole
    assert load_tool('train').main([FP32, '--dry-run']) == 0
    out = capsys.readouterr().out
    assert ('sharded (est)     1.81 MB / N + 4.68 MB per rank on N processes (4.91 MB on 8): '
            'model_wrapper_cfg VargoFSDP') in out, out
