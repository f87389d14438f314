"""Run ``tools/train.py`` and SIGKILL it at a chosen moment (a helper of
tests/test_crash_recovery.py, not a test module).

    python tests/kill_injection.py KILL_AT -- <tools/train.py arguments>

KILL_AT is one of
  ``step:N``              in the N-th optimizer step (mid-iteration, after the rollout);
  ``rename:NAME``         just before the temp file of NAME (``iter_3.pth``, ``last_checkpoint``)
                          is renamed into place: the new file is complete but not in place;
  ``fsync:NAME``          just before the temp file of NAME is fsynced: the write is unfinished;
  ``remove:NAME``         just before NAME (an outdated checkpoint) is deleted;
  ``timer:N:SECONDS``     SECONDS after the N-th optimizer step starts, wherever the run is then.
The process kills itself with SIGKILL (no handler, no flush, no atexit), as ``kill -9`` would.
"""
import os
import signal
import sys
import threading

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _die():
    os.kill(os.getpid(), signal.SIGKILL)


def _install(kill_at: str) -> None:
    kind, _, arg = kill_at.partition(':')
    if kind in ('rename', 'remove'):
        real = os.replace if kind == 'rename' else os.remove

        def patched(src, *rest, **kw):
            target = rest[0] if kind == 'rename' else src
            if os.path.basename(str(target)) == arg:
                _die()
            return real(src, *rest, **kw)
        setattr(os, 'replace' if kind == 'rename' else 'remove', patched)
    elif kind == 'fsync':
        real_fsync = os.fsync

        def fsync(fd):
            # vargo.core.checkpoint.atomic_write_bytes fsyncs its temp file with ``path`` (the
            # target) in its frame
            target = sys._getframe(1).f_locals.get('path')
            if target and os.path.basename(str(target)) == arg:
                _die()
            return real_fsync(fd)
        os.fsync = fsync
    elif kind in ('step', 'timer'):
        from vargo.core.algorithm import RLAlgorithm
        n, _, seconds = arg.partition(':')
        real_loss = RLAlgorithm.loss  # called once per optimizer step, whatever drives it
        calls = [0]

        def loss(self, *a, **kw):
            calls[0] += 1
            if calls[0] == int(n):
                if kind == 'step':
                    _die()
                threading.Timer(float(seconds), _die).start()
            return real_loss(self, *a, **kw)
        RLAlgorithm.loss = loss
    else:
        raise SystemExit(f'unknown KILL_AT {kill_at!r}')


if __name__ == '__main__':
    kill_at, sep, *train_args = sys.argv[1:]
    assert sep == '--', 'usage: kill_injection.py KILL_AT -- <train.py arguments>'
    sys.path.insert(0, os.path.join(ROOT, 'tools'))
    _install(kill_at)
    import train
    sys.exit(train.main(train_args))
