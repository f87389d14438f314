"""tools/print_config.py, tools/sample.py and tools/train.py --dry-run on the quick-start config."""
import os

from conftest import ROOT, run_python

TINY = os.path.join(ROOT, 'configs', 'grpo', 'llamagen-tiny_grpo_jpeg.py')
OFFICIAL = os.path.join(ROOT, 'configs', 'grpo', 'llamagen-b_grpo_c2i.py')


def _run(*args, cwd=ROOT):
    return run_python(*args, check=False, cwd=cwd)


def test_print_config_shows_assembled_model():
    proc = _run('tools/print_config.py', TINY)
    assert proc.returncode == 0, proc.stderr
    assert "type='RLAlgorithm'" in proc.stdout and 'batch_size=8' in proc.stdout  # 32 // G=4


def test_dry_run_reports_sizes_and_estimates():
    proc = _run('tools/train.py', TINY, '--dry-run', '--work-dir', '/tmp/never_created_dry_run')
    assert proc.returncode == 0, proc.stderr
    for text in ('trainable', 'memory/rank (est)', 'FLOPs/iteration', 'actions/sample    64'):
        assert text in proc.stdout
    assert not os.path.exists('/tmp/never_created_dry_run')


def test_dry_run_names_each_missing_official_file_and_where_it_is_published():
    proc = _run('tools/train.py', OFFICIAL, '--dry-run')
    assert proc.returncode == 2
    for text in ('c2i_B_256.pt', 'vq_ds16_c2i.pt',
                 'https://huggingface.co/FoundationVision/LlamaGen/resolve/main/c2i_B_256.pt',
                 'configs/grpo/llamagen_grpo_shapes.py'):
        assert text in proc.stderr
    assert 'Traceback' not in proc.stderr


def test_sample_writes_a_grid(tmp_path):
    out = tmp_path / 'grid.png'
    proc = _run('tools/sample.py', TINY, '--classes', '1', '2', '--per-condition', '3',
                '--out', str(out))
    assert proc.returncode == 0, proc.stderr
    from PIL import Image
    img = Image.open(out)
    # 2 rows x 3 columns of 32 px images shown as 96 px cells (3x3 pixel blocks), 2 px padding
    assert img.size == (3 * 98 + 2, 2 * 98 + 2)
