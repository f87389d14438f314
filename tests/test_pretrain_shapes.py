"""tools/pretrain_shapes.py end to end at toy length: weights, JSON record and model card are
written, the weights reload strictly through the config, and bad arguments fail clearly."""
import json
import os

import pytest
from safetensors import safe_open

from conftest import ROOT, run_python

TOOL = os.path.join(ROOT, 'tools', 'pretrain_shapes.py')


def _run(*args):
    return run_python(TOOL, *args, check=False)


def test_vq_and_llamagen_c2i_toy_runs_write_weights_record_and_card(tmp_path):
    vq = tmp_path / 'vq.safetensors'
    proc = _run('vq', '--steps', '3', '--batch-size', '4', '--eval-images', '16', '--threads', '1',
                '--log-every', '1', '--out', str(vq), '--no-progress')
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    rec = json.loads((tmp_path / 'vq.json').read_text())
    assert rec['steps'] == 3 and len(rec['log']) == 3 and rec['subcommand'] == 'vq'
    # no progress bar: the last logged row (and every 10th) is printed as a JSON line
    assert json.loads(proc.stdout.splitlines()[0]) == rec['log'][-1]
    assert set(rec['evaluation']) >= {'c2i', 't2i', 'codebook_used'}
    assert rec['evaluation']['c2i']['reconstruction']['n'] == 16
    card = (tmp_path / 'vq.md').read_text()
    assert rec['command'] in card and '## Evaluation' in card
    with safe_open(str(vq), framework='pt') as f:
        assert f.metadata()['subcommand'] == 'vq' and f.metadata()['steps'] == '3'

    # the GPT on top of that tokenizer; its evaluation reloads both through the config
    gpt = tmp_path / 'c2i.safetensors'
    proc = _run('llamagen-c2i', '--steps', '2', '--batch-size', '4', '--threads', '1',
                '--tokenizer-checkpoint', str(vq), '--eval-per-condition', '1', '--out', str(gpt),
                '--no-progress')
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    rec = json.loads((tmp_path / 'c2i.json').read_text())
    main = rec['evaluation']['main']['train']
    assert main['n'] == 18 and 0.0 <= main['strict'] <= 1.0
    assert (tmp_path / 'c2i.md').exists()


def test_bad_arguments_fail_with_a_clear_message(tmp_path):
    proc = _run('vq', '--steps', '0')
    assert proc.returncode == 2 and '--steps must be >= 1' in proc.stderr
    proc = _run('llamagen-t2i', '--config', 'configs/_base_/policies/llamagen_shapes_c2i.py',
                '--steps', '1', '--batch-size', '2', '--out', str(tmp_path / 'x.safetensors'),
                '--no-progress')
    assert proc.returncode != 0 and 'needs a t2i config' in proc.stderr


def test_kl_vae_and_mar_c2i_toy_runs_write_weights_record_and_card(tmp_path):
    vae = tmp_path / 'kl.safetensors'
    proc = _run('kl-vae', '--steps', '2', '--batch-size', '4', '--eval-images', '16',
                '--threads', '1', '--log-every', '1', '--out', str(vae), '--no-progress')
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    rec = json.loads((tmp_path / 'kl.json').read_text())
    assert rec['steps'] == 2 and len(rec['log']) == 2 and rec['subcommand'] == 'kl-vae'
    assert {'loss', 'rec', 'kl'} <= set(rec['log'][0])
    ev = rec['evaluation']
    assert set(ev) >= {'c2i', 't2i', 'latent_std', 'unit_std_scale_factor'}
    assert 'codebook_used' not in ev and ev['c2i']['reconstruction']['n'] == 16
    card = (tmp_path / 'kl.md').read_text()
    assert rec['command'] in card and '## Evaluation' in card and 'scale_factor' in card
    with safe_open(str(vae), framework='pt') as f:
        assert f.metadata()['subcommand'] == 'kl-vae'

    # the MAR on that VAE; its evaluation reloads both through the config and samples
    mar = tmp_path / 'mar.safetensors'
    proc = _run('mar-c2i', '--steps', '2', '--batch-size', '4', '--threads', '1',
                '--tokenizer-checkpoint', str(vae), '--eval-per-condition', '1',
                '--out', str(mar), '--no-progress')
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    rec = json.loads((tmp_path / 'mar.json').read_text())
    main = rec['evaluation']['main']['train']
    assert main['n'] == 18 and 0.0 <= main['strict'] <= 1.0
    assert rec['evaluation']['sampler']['type'] == 'MaskedSampler'
    assert 'EMA' in rec['notes'] and rec['architecture']['tokens'] == 64
    card = (tmp_path / 'mar.md').read_text()
    assert rec['command'] in card and 'masked autoregression' in card
    with safe_open(str(mar), framework='pt') as f:
        assert f.metadata()['subcommand'] == 'mar-c2i'
        assert 'diffloss.net.final_layer.linear.weight' in f.keys()


def test_mar_subcommands_reject_other_configs_and_quantizer_options(tmp_path):
    var = 'configs/_base_/policies/var_shapes_c2i.py'
    for sub in ('kl-vae', 'mar-c2i'):
        proc = _run(sub, '--config', var, '--steps', '1', '--batch-size', '2',
                    '--out', str(tmp_path / 'x.safetensors'), '--no-progress')
        assert proc.returncode != 0 and 'need a MARPolicy config' in proc.stderr, proc.stderr[-500:]
    proc = _run('kl-vae', '--restart-every', '5')     # a VQ option: the KL VAE has no codebook
    assert proc.returncode == 2 and 'unrecognized arguments: --restart-every' in proc.stderr


def test_vqgan_and_vqgan_c2i_toy_runs_write_weights_record_and_card(tmp_path):
    vq = tmp_path / 'vqgan.safetensors'
    proc = _run('vqgan', '--steps', '3', '--batch-size', '4', '--eval-images', '16',
                '--threads', '1', '--log-every', '1', '--restart-every', '1', '--out', str(vq),
                '--no-progress')
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    rec = json.loads((tmp_path / 'vqgan.json').read_text())
    assert rec['steps'] == 3 and len(rec['log']) == 3 and rec['subcommand'] == 'vqgan'
    assert {'loss', 'rec', 'codebook', 'commit', 'perplexity'} <= set(rec['log'][0])
    assert any(row.get('restarted', 0) > 0 for row in rec['log'])   # dead codes re-initialised
    ev = rec['evaluation']
    assert ev['codebook_size'] == 512 and 0 < ev['codebook_used'] <= 512
    assert ev['c2i']['reconstruction']['n'] == 16
    assert rec['architecture']['downsample'] == 4 and rec['architecture']['tokens'] == 64
    card = (tmp_path / 'vqgan.md').read_text()
    assert rec['command'] in card and 'VQGAN reconstructions' in card
    with safe_open(str(vq), framework='pt') as f:
        # taming's VQModel keys, no LlamaGen VQ names
        keys = set(f.keys())
        assert f.metadata()['subcommand'] == 'vqgan'
    assert {'quantize.embedding.weight', 'quant_conv.weight', 'post_quant_conv.weight',
            'encoder.mid.attn_1.q.weight', 'encoder.down.2.attn.0.q.weight',
            'decoder.up.2.block.1.conv1.weight'} <= keys
    assert not any('conv_blocks' in k for k in keys)

    # the transformer on that tokenizer; its evaluation reloads both through the config
    gpt = tmp_path / 'vqgan_c2i.safetensors'
    proc = _run('vqgan-c2i', '--steps', '2', '--batch-size', '4', '--threads', '1',
                '--tokenizer-checkpoint', str(vq), '--eval-per-condition', '1',
                '--out', str(gpt), '--no-progress')
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    rec = json.loads((tmp_path / 'vqgan_c2i.json').read_text())
    main = rec['evaluation']['main']['train']
    assert main['n'] == 18 and 0.0 <= main['strict'] <= 1.0
    assert rec['evaluation']['sampler']['cfg_scale'] == 1.0
    assert rec['architecture']['tokens'] == 64 and rec['architecture']['block_size'] == 64
    assert (tmp_path / 'vqgan_c2i.md').exists()
    with safe_open(str(gpt), framework='pt') as f:
        keys = set(f.keys())
    assert {'tok_emb.weight', 'pos_emb', 'blocks.0.attn.query.weight', 'head.weight'} <= keys
    assert not any(k.endswith('attn.mask') for k in keys)


def test_vqgan_subcommands_reject_other_configs_and_guidance(tmp_path):
    var = 'configs/_base_/policies/var_shapes_c2i.py'
    for sub in ('vqgan', 'vqgan-c2i'):
        proc = _run(sub, '--config', var, '--steps', '1', '--batch-size', '2',
                    '--out', str(tmp_path / 'x.safetensors'), '--no-progress')
        assert proc.returncode != 0 and 'need a VQGANTransformerPolicy config' in proc.stderr, \
            proc.stderr[-500:]
    proc = _run('vqgan-c2i', '--steps', '1', '--batch-size', '2', '--cfg-scales', '1', '2',
                '--out', str(tmp_path / 'x.safetensors'), '--no-progress')
    assert proc.returncode != 0 and 'no null class to guide with' in proc.stderr, \
        proc.stderr[-500:]
    assert not (tmp_path / 'x.safetensors').exists()


def test_janus_vq_and_janus_t2i_toy_runs_write_weights_that_load_strictly(tmp_path):
    vq = tmp_path / 'janus_vq.safetensors'
    proc = _run('janus-vq', '--steps', '3', '--batch-size', '4', '--eval-images', '16',
                '--threads', '1', '--log-every', '1', '--restart-every', '1', '--out', str(vq),
                '--no-progress')
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    rec = json.loads((tmp_path / 'janus_vq.json').read_text())
    assert rec['subcommand'] == 'janus-vq' and len(rec['log']) == 3
    assert any(row.get('restarted', 0) > 0 for row in rec['log'])
    assert rec['architecture']['tokens'] == 64 and rec['evaluation']['codebook_size'] == 512
    with safe_open(str(vq), framework='pt') as f:
        keys = set(f.keys())                                      # transformers' JanusVQVAE keys
    assert {'quantize.embedding.weight', 'quant_conv.weight', 'encoder.mid.attn_1.q.weight',
            'decoder.conv_out.weight'} <= keys

    model = tmp_path / 'janus_t2i.safetensors'
    proc = _run('janus-t2i', '--steps', '2', '--batch-size', '4', '--threads', '1',
                '--tokenizer-checkpoint', str(vq), '--eval-per-condition', '1',
                '--eval-prompts', '6', '--out', str(model), '--no-progress')
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    rec = json.loads((tmp_path / 'janus_t2i.json').read_text())
    ev = rec['evaluation']['main']
    assert set(ev) == {'train', 'eval'} and 0.0 <= ev['train']['strict'] <= 1.0
    assert rec['architecture']['tokens'] == 64 and rec['architecture']['prompt_dropout'] == 0.1
    with safe_open(str(model), framework='pt') as f:
        keys = set(f.keys())
    parts = {k.split('.')[0] for k in keys}
    assert parts == {'language_model', 'generation_embeddings', 'generation_aligner',
                     'generation_head'}

    # both files load strictly through the config; a file of the wrong part is refused
    from mmengine import Config
    from vargo.components.policies.janus import JanusPolicy
    from vargo.core.checkpoint import StateDictMismatch
    cfg = dict(Config.fromfile(os.path.join(ROOT, 'configs/_base_/policies/janus_shapes_t2i.py'))
               .policy)
    cfg.pop('type')
    JanusPolicy(**{**cfg, 'checkpoint': str(model), 'tokenizer_checkpoint': str(vq)})
    with pytest.raises(StateDictMismatch, match='Janus generation weights file .*missing keys'):
        JanusPolicy(**{**cfg, 'checkpoint': str(vq), 'tokenizer_checkpoint': str(vq)})
    with pytest.raises(FileNotFoundError, match='rebuilt by tools/pretrain_shapes.py'):
        JanusPolicy(**{**cfg, 'checkpoint': str(tmp_path / 'absent.safetensors'),
                       'tokenizer_checkpoint': str(vq)})


# ---- the package behind the tool: registry dispatch, one module per family ----------------------
PACKAGE = os.path.join(ROOT, 'components', 'benchmarks', 'pretrain')
FAMILIES = ('llamagen', 'var', 'mar', 'vqgan', 'janus')


def test_subcommands_are_registered_by_family_and_eval_dispatches_on_policy_type():
    from vargo.components.benchmarks.pretrain import PRETRAINERS, WRITERS, pretrainer_for
    from vargo.components.benchmarks.pretrain.cli import parse_args  # noqa: F401  (registers)
    from vargo.components.benchmarks.pretrain.common import load_cfg
    assert list(PRETRAINERS) == ['vq', 'llamagen-c2i', 'llamagen-t2i', 'msvq', 'var-c2i',
                                 'kl-vae', 'mar-c2i', 'vqgan', 'vqgan-c2i', 'janus-vq', 'janus-t2i']
    assert list(WRITERS) == ['text-encoder']
    policies = os.path.join(ROOT, 'configs', '_base_', 'policies')
    expected = {'llamagen_shapes_c2i.py': ('vq', 'llamagen-c2i'),
                'llamagen_shapes_t2i.py': ('vq', 'llamagen-t2i'),
                'var_shapes_c2i.py': ('msvq', 'var-c2i'),
                'mar_shapes_c2i.py': ('kl-vae', 'mar-c2i'),
                'vqgan_shapes_c2i.py': ('vqgan', 'vqgan-c2i'),
                'janus_shapes_t2i.py': ('janus-vq', 'janus-t2i')}
    for name, (tokenizer, model) in expected.items():
        cfg = load_cfg(os.path.join(policies, name))
        assert pretrainer_for(cfg, name, tokenizer=True).name == tokenizer, name
        assert pretrainer_for(cfg, name, tokenizer=False).name == model, name
    # every family's subcommands check the config's policy.type, naming the family
    cfg = load_cfg(os.path.join(policies, 'var_shapes_c2i.py'))
    with pytest.raises(ValueError, match='vq, llamagen-c2i and llamagen-t2i subcommands need a '
                                         'LlamaGenPolicy config'):
        PRETRAINERS['vq'].check_config(cfg, 'var_shapes_c2i.py')


def test_no_family_module_imports_another_family():
    import ast
    for family in FAMILIES:
        tree = ast.parse(open(os.path.join(PACKAGE, f'{family}.py')).read())
        imported = set()                  # modules of this package the family module imports
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                module = node.module or ''
                if node.level == 0 and not module.startswith(
                        'vargo.components.benchmarks.pretrain'):
                    continue
                imported.add(module.split('.')[-1])
                imported.update(a.name for a in node.names)
            elif isinstance(node, ast.Import):
                imported.update(a.name.split('.')[-1] for a in node.names
                                if a.name.startswith('vargo.components.benchmarks.pretrain'))
        assert not imported & (set(FAMILIES) - {family}), (family, imported)
    # the tool is the package's command line, nothing more
    tool = open(TOOL).read()
    assert 'from vargo.components.benchmarks.pretrain.cli import main' in tool
    assert 'class ' not in tool.split('"""', 2)[2]
