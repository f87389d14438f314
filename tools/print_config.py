"""Print a config after `_base_` inheritance, --cfg-options and vargo's assembly.

    python tools/print_config.py CONFIG [--cfg-options k=v ...] [--raw]
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault('HF_HUB_OFFLINE', '1')

from mmengine.config import DictAction  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('config')
    p.add_argument('--cfg-options', nargs='+', action=DictAction)
    p.add_argument('--raw', action='store_true',
                   help='print the merged config without assembling the model')
    args = p.parse_args(argv)
    from vargo.core.config import assemble
    from vargo.core.registry import ConfigError
    from vargo.core.runner import load_config
    cfg = load_config(args.config, args.cfg_options)
    if not args.raw:
        try:
            assemble(cfg)
        except ConfigError as e:
            print(f'error: {e}', file=sys.stderr)
            return 2
    print(cfg.pretty_text)
    return 0


if __name__ == '__main__':
    sys.exit(main())
