"""List every registered vargo component with its one-line description.

    python tools/list_components.py [--registry policy|sampler|...] [--config CONFIG]

``--config`` also imports the config's ``custom_imports`` (your own components).
"""
from __future__ import annotations

import argparse
import inspect
import os
import sys

os.environ.setdefault('HF_HUB_OFFLINE', '1')


def first_line(obj) -> str:
    """The docstring's first sentence (its first paragraph up to the first full stop)."""
    doc = (inspect.getdoc(obj) or '').strip()
    para = ' '.join(doc.split('\n\n')[0].split())
    for end in ('. ', '.\n'):
        if end in para + '\n':
            para = (para + '\n').split(end)[0] + '.'
            break
    return para or '(no description)'


def collect(only=None) -> dict[str, list[tuple[str, str]]]:
    from vargo.core.registry import ALL_REGISTRIES
    out = {}
    for kind, reg in ALL_REGISTRIES.items():
        if only and kind != only:
            continue
        reg.import_from_location()
        out[kind] = sorted((name, first_line(cls)) for name, cls in reg.module_dict.items())
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--registry', help='only this registry')
    p.add_argument('--config', help="also list the components a config's custom_imports register")
    args = p.parse_args(argv)
    if args.config:
        from mmengine.config import Config
        Config.fromfile(args.config)  # runs custom_imports
    table = collect(args.registry)
    if args.registry and not table:
        from vargo.core.registry import ALL_REGISTRIES
        print(f'unknown registry {args.registry!r}; choose from {", ".join(ALL_REGISTRIES)}',
              file=sys.stderr)
        return 2
    for kind, rows in table.items():
        print(f'{kind} ({len(rows)})')
        width = max((len(n) for n, _ in rows), default=0)
        for name, desc in rows:
            print(f'  {name:<{width}}  {desc}')
        print()
    return 0


if __name__ == '__main__':
    sys.exit(main())
