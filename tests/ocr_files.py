"""Tiny PP-OCRv5 detector / recogniser directories in the ``PaddlePaddle/PP-OCRv5_*_safetensors``
layout (``config.json``, ``model.safetensors``, ``preprocessor_config.json``), written offline
from small configs with seeded random weights.

The detector's last bias is set high (``det_bias``) so that its probability map is about 1 over
the whole image: one text box covering it, whatever the weights. The recogniser's classifier is
scaled (``rec_gain``) so that its per-step probabilities are peaked (recognition scores well
above PaddleOCR's drop score 0.5).
"""
from __future__ import annotations

import os

import torch

#: the recogniser's characters: index 0 is CTC's blank, the last a space (PaddleOCR's layout)
CHARS = ['blank'] + list('abcdefghij') + [' ']

_BB = dict(model_type='pp_lcnet_v3', scale=0.25, divisor=8, conv_symmetric_num=1,
           out_features=['stage2', 'stage3', 'stage4', 'stage5'], out_indices=[2, 3, 4, 5])
# (kernel, in, out, stride, squeeze-excitation) per block; the recogniser's strides keep the
# width (a text line of W pixels gives W / 8 CTC steps), as PP-LCNetV3's recognition layout
_DET_BLOCKS = [[[3, 16, 32, 1, False]], [[3, 32, 64, 2, False]], [[3, 64, 128, 2, False]],
               [[3, 128, 256, 2, False]], [[5, 256, 512, 2, True]]]
_REC_BLOCKS = [[[3, 16, 32, 1, False]], [[3, 32, 64, 1, False]], [[3, 64, 128, [2, 1], False]],
               [[3, 128, 256, [1, 2], False]],
               [[5, 256, 512, [2, 1], True], [5, 512, 512, [2, 1], False]]]


def _save(model, processor, directory: str, keep_counters: bool = False) -> str:
    from safetensors.torch import save_file
    os.makedirs(directory, exist_ok=True)
    model.config.to_json_file(os.path.join(directory, 'config.json'))
    processor.save_pretrained(directory)
    state = {k: v.contiguous() for k, v in model.state_dict().items()
             if keep_counters or not k.endswith('num_batches_tracked')}
    save_file(state, os.path.join(directory, 'model.safetensors'))
    return directory


def _randomize(model, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            fan_in = max(1, p[0].numel()) if p.dim() > 1 else 1
            scale = 0.05 if p.dim() == 1 else 1.5 / fan_in ** 0.5
            gain = p.dim() == 1 and name.endswith(('weight', 'scale'))   # norms, affine blocks
            p.copy_(torch.randn(p.shape, generator=g) * scale + gain)
        for name, b in model.named_buffers():
            if name.endswith('running_mean'):
                b.copy_(torch.randn(b.shape, generator=g) * 0.05)
            elif name.endswith('running_var'):
                b.copy_(1 + 0.1 * torch.rand(b.shape, generator=g))


def det_model(seed: int = 0, det_bias: float = 100.0):
    from transformers import PPOCRV5MobileDetConfig, PPOCRV5MobileDetForObjectDetection
    cfg = PPOCRV5MobileDetConfig(backbone_config=dict(_BB, block_configs=_DET_BLOCKS),
                                 neck_out_channels=16, layer_list_out_channels=[8, 8, 8, 16])
    model = PPOCRV5MobileDetForObjectDetection(cfg).eval()
    _randomize(model, seed)
    with torch.no_grad():
        model.head.conv_final.bias.fill_(det_bias)
    return model


def rec_model(seed: int = 1, rec_gain: float = 6.0):
    from transformers import PPOCRV5MobileRecConfig, PPOCRV5MobileRecForTextRecognition
    cfg = PPOCRV5MobileRecConfig(backbone_config=dict(_BB, block_configs=_REC_BLOCKS),
                                 hidden_size=16, depth=1, num_attention_heads=2,
                                 head_out_channels=len(CHARS))
    model = PPOCRV5MobileRecForTextRecognition(cfg).eval()
    _randomize(model, seed)
    with torch.no_grad():
        model.head.head.weight.mul_(rec_gain)
    return model


def write_det_dir(directory: str, **kw) -> str:
    from transformers import PPOCRV5ServerDetImageProcessor
    return _save(det_model(**kw), PPOCRV5ServerDetImageProcessor(), directory)


def write_rec_dir(directory: str, *, keep_counters: bool = False, **kw) -> str:
    from transformers import PPOCRV5ServerRecImageProcessor
    return _save(rec_model(**kw), PPOCRV5ServerRecImageProcessor(character_list=CHARS),
                 directory, keep_counters=keep_counters)


def write_ocr_dirs(root: str) -> tuple[str, str]:
    """``(det_dir, rec_dir)`` under ``root``, named as the official directories."""
    return (write_det_dir(os.path.join(root, 'PP-OCRv5_mobile_det_safetensors')),
            write_rec_dir(os.path.join(root, 'PP-OCRv5_mobile_rec_safetensors')))
