"""docs/adding_a_component.md runs as written: its code blocks are executed in order."""
import os
import re
import subprocess
import sys

from conftest import ROOT

DOC = os.path.join(ROOT, 'docs', 'adding_a_component.md')


def _blocks():
    text = open(DOC).read()
    return re.findall(r'```(python|bash)\n(.*?)```', text, flags=re.S)


def test_adding_a_component_example_runs(tmp_path):
    blocks = _blocks()
    assert [lang for lang, _ in blocks] == ['python', 'python', 'bash']
    env = dict(os.environ, PYTHONPATH=str(tmp_path), HF_HUB_OFFLINE='1')
    outputs = []
    for lang, body in blocks:
        body = body.replace('{ROOT}', ROOT)
        if lang == 'python':
            name = re.match(r'# file: (\S+)', body).group(1)
            (tmp_path / name).write_text(body)
            continue
        for line in body.strip().splitlines():
            cmd = line.split('#')[0].strip().replace('python ', sys.executable + ' ', 1)
            proc = subprocess.run(cmd, shell=True, cwd=tmp_path, env=env, capture_output=True,
                                  text=True, timeout=600)
            assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
            outputs.append(proc.stdout + proc.stderr)
    assert 'BrightnessReward' in outputs[0]
    assert re.search(r'reward/brightness/mean: -?[0-9.]+', outputs[1])
    assert re.search(r'reward/brightness/brightness: [0-9.]+', outputs[1])
    work = tmp_path / 'work_dirs' / 'brightness'
    assert (work / 'iter_2.pth').exists() and (work / 'grids' / 'samples_iter000002.png').exists()


def test_readme_quick_start_has_two_commands_naming_existing_files():
    """The README's quick start: exactly two commands, the install-and-run main job (whose config
    exists and is the one tests/test_shapes_grpo.py pins) and the install-and-test command that
    .ci/run runs."""
    text = open(os.path.join(ROOT, 'README.md')).read()
    quick = text[text.index('## Quick start'):]
    block = re.search(r'```bash\n(.*?)```', quick, flags=re.S).group(1)
    commands = [line for line in block.splitlines() if line.strip() and not line.startswith('#')]
    assert len(commands) == 2, commands
    main_job, tests = commands
    config = re.search(r'tools/train.py (\S+)', main_job).group(1)
    assert os.path.isfile(os.path.join(ROOT, config)), config
    assert config == 'configs/stage/llamagen_stage_shapes.py'
    assert 'pip install -e .' in main_job and 'python -m pytest' in tests
    ci = open(os.path.join(ROOT, '.ci', 'run')).read()
    assert 'pip install -e ".[test]"' in ci and 'python -m pytest' in ci


def test_every_method_config_is_listed_in_its_folders_readme_and_metafile():
    """configs/<method>/README.md and metafile.yml document every config of the folder."""
    import glob
    import yaml
    for folder in sorted(glob.glob(os.path.join(ROOT, 'configs', '*'))):
        if os.path.basename(folder) == '_base_' or not os.path.isdir(folder):
            continue
        names = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(folder, '*.py')))
        readme = open(os.path.join(folder, 'README.md')).read()
        meta = yaml.safe_load(open(os.path.join(folder, 'metafile.yml')))
        listed = {m['Name'] for m in meta['Models']}
        for name in names:
            assert f'{name}.py' in readme, (folder, name)
            assert name in listed, (folder, name)
        for m in meta['Models']:
            assert os.path.isfile(os.path.join(ROOT, m['Config'])), m['Config']
