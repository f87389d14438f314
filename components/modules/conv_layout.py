"""Channels-last layout for the image decoders' convolutions.

oneDNN's CPU convolutions can run faster on NHWC (channels-last) activations than on NCHW ones;
the layout of the input is what selects the kernels (the weights stay as they are). Measured
with 1 thread on a 2-core AMD EPYC, random weights, input-only channels-last as here (best of 2):
MAR's KL-16 VAE 1.21x (2 images at 256 px, quiet machine), LlamaGen's VQ-16 1.04x (same), the
Shapes benchmark's small VQ and KL decoders 1.53x and 1.42x (256 images at 32 px, next to other
jobs). Converting the decoder weights to channels-last as well gave VQ-16 1.2x in a loaded run;
it is not done, because it would change the layout of tensors that tools save. Outputs differ
from the NCHW ones by float summation order only (max |diff| 5e-5 on [-1, 1] images).
``torch.inference_mode`` instead of ``no_grad`` gained nothing measurable there.

:func:`decode_chunk_size` sets how many images a policy decodes at once: at most
:data:`DECODE_PIXELS_PER_CHUNK` output pixels (two 256 px images). A 256 px decoder's
activations are hundreds of MB per image at full resolution; decoding 8 at once, the VQ-16
decoder's convolutions ran at 78% of the GEMM peak (3.4 s per image), 2 at once at 101%
(2.4 s per image), in two operator profiles of the same command on the same quiet machine
(README, "Operator profiles"). Small images go :data:`MAX_DECODE_CHUNK` at a time, as before
this rule, so the Shapes benchmark's decodes keep their bits. The chunk size can change the
convolutions' summation order (oneDNN picks kernels by batch size), not more.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

__all__ = ['DECODE_PIXELS_PER_CHUNK', 'MAX_DECODE_CHUNK', 'decode_channels_last',
           'decode_chunk_size', 'decode_in_chunks']

#: output pixels a policy decodes at once by default (module doc)
DECODE_PIXELS_PER_CHUNK = 2 * 256 * 256
#: and at most this many images
MAX_DECODE_CHUNK = 16


def decode_chunk_size(image_size: int) -> int:
    """Images of side ``image_size`` decoded at once: ``DECODE_PIXELS_PER_CHUNK //
    image_size^2`` within ``[1, MAX_DECODE_CHUNK]`` (2 at 256 px, 1 at 384 px, 16 at 64 px)."""
    return max(1, min(MAX_DECODE_CHUNK, DECODE_PIXELS_PER_CHUNK // (int(image_size) ** 2)))


def decode_in_chunks(decode: Callable[[Tensor], Tensor], x: Tensor, chunk: int) -> Tensor:
    """``decode`` applied to ``chunk`` rows of ``x`` at a time, the images concatenated."""
    return torch.cat([decode(x[i:i + chunk]) for i in range(0, x.shape[0], chunk)], dim=0)


def decode_channels_last(decoder: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """``decoder(x)`` computed on ``x [B, C, h, w]`` in channels-last layout (on a CPU), the
    result returned contiguous (NCHW); other inputs and devices run as given.

    Examples:
        >>> conv = torch.nn.Conv2d(4, 3, 3, padding=1)
        >>> x = torch.randn(2, 4, 8, 8)
        >>> y = decode_channels_last(conv, x)
        >>> y.is_contiguous(), bool(torch.allclose(y, conv(x), atol=1e-5))
        (True, True)
    """
    if x.dim() != 4 or x.device.type != 'cpu':
        return decoder(x)
    return decoder(x.contiguous(memory_format=torch.channels_last)).contiguous()
