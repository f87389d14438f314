"""Crafted checkpoint files for the safety tests (pickle opcodes in a real torch zip container;
see tests/test_checkpoint_safety.py). Not a test module."""
import io
import pickle
import zipfile

import torch

__all__ = ['torch_zip', 'getattr_chain_payload', 'reduce_payload']


def torch_zip(pkl: bytes) -> bytes:
    """A real ``torch.save`` zip container whose ``data.pkl`` is replaced by ``pkl``."""
    buf = io.BytesIO()
    torch.save({'x': torch.zeros(1)}, buf)
    src = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, 'w', zipfile.ZIP_STORED) as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            dst.writestr(item, pkl if item.filename.endswith('/data.pkl') else data)
    return out.getvalue()


def _unicode(s: str) -> bytes:
    b = s.encode()
    return b'X' + len(b).to_bytes(4, 'little') + b


def getattr_chain_payload(marker: str) -> bytes:
    code = f"open({marker!r}, 'w').write('pwned')"
    g = b'c__builtin__\ngetattr\n'
    builtins_module = g + b'(' + g + _unicode('__self__') + b'tR'        # getattr(getattr, '__self__')
    exec_fn = g + b'(' + builtins_module + _unicode('exec') + b'tR'      # getattr(<builtins>, 'exec')
    call = (b'ctorch._tensor\n_rebuild_from_type_v2\n(' + exec_fn + b'ctorch\nTensor\n'
            + b'(' + _unicode(code) + b't}tR')                           # (exec, Tensor, (code,), {})
    return torch_zip(b'\x80\x02' + call + b'.')


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('pwned')",)


def reduce_payload(marker: str) -> bytes:
    return torch_zip(pickle.dumps({'state_dict': _Exploit(marker)}, protocol=2))
