"""Write one self-contained HTML page about a run: config, environment, curves, image grids,
evaluation results (every eval.json under the work dir, each table with its evaluation protocol
under it) and the reward-hacking monitor's warnings (``vargo.core.run_report``).

    python tools/report.py WORK_DIR [--out FILE]

Default output: ``WORK_DIR/report.html``. Images are embedded (base64 PNG); the page opens
offline. Training writes the same page at the end of every run (``RunReportHook``).
"""
from __future__ import annotations

import os
import sys

from vargo.core.cli import ArgumentParser, existing_path, fail  # noqa: E402


def main(argv=None) -> int:
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('work_dir', type=lambda t: existing_path(t, 'a run\'s work directory'),
                   help='the run\'s work directory (--work-dir of tools/train.py)')
    p.add_argument('--out', default=None, help='output file (default: WORK_DIR/report.html)')
    args = p.parse_args(argv)
    if not os.path.isdir(args.work_dir):
        return fail(f'work_dir: {args.work_dir} is not a directory; give a run\'s work directory')
    os.environ.setdefault('MPLBACKEND', 'Agg')
    from vargo.core.run_report import write_report
    print(write_report(args.work_dir, args.out))
    return 0


if __name__ == '__main__':
    sys.exit(main())
