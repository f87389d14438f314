"""Tiny GenEval files written by the tests (offline): a random Mask2Former directory in the
layout of the Hugging Face release, a tiny OpenCLIP checkpoint, a metadata file."""
from __future__ import annotations

import json

import torch

#: a tiny OpenCLIP (open_clip.CLIP arguments; 32 px)
TINY_CLIP = dict(embed_dim=16,
                 vision_cfg=dict(image_size=32, layers=1, width=32, patch_size=8, head_width=16),
                 text_cfg=dict(context_length=16, vocab_size=49408, width=32, heads=2, layers=1))

#: a small GenEval metadata file: one prompt per tag (GenEval's format)
METADATA = [
    {'tag': 'single_object', 'include': [{'class': 'bench', 'count': 1}],
     'prompt': 'a photo of a bench'},
    {'tag': 'two_object', 'include': [{'class': 'cat', 'count': 1}, {'class': 'dog', 'count': 1}],
     'prompt': 'a photo of a cat and a dog'},
    {'tag': 'counting', 'include': [{'class': 'bus', 'count': 2}],
     'exclude': [{'class': 'bus', 'count': 3}], 'prompt': 'a photo of two buses'},
    {'tag': 'colors', 'include': [{'class': 'car', 'count': 1, 'color': 'red'}],
     'prompt': 'a photo of a red car'},
    {'tag': 'position', 'include': [{'class': 'dog', 'count': 1},
                                    {'class': 'cat', 'count': 1, 'position': ['left of', 0]}],
     'prompt': 'a photo of a cat left of a dog'},
    {'tag': 'color_attr', 'include': [{'class': 'car', 'count': 1, 'color': 'red'},
                                      {'class': 'apple', 'count': 1, 'color': 'green'}],
     'prompt': 'a photo of a red car and a green apple'},
]


def write_metadata(path: str, entries=METADATA) -> str:
    with open(path, 'w') as f:
        for e in entries:
            f.write(json.dumps(e) + '\n')
    return path


def tiny_mask2former_config(num_labels: int = 80):
    from transformers import Mask2FormerConfig, SwinConfig
    from vargo.components.rewards.geneval_rules import MMDET_COCO_NAMES
    backbone = SwinConfig(image_size=64, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1],
                          num_heads=[1, 1, 2, 2], window_size=4,
                          out_features=['stage1', 'stage2', 'stage3', 'stage4'])
    id2label = {i: MMDET_COCO_NAMES[i] if num_labels == 80 else f'thing{i}'
                for i in range(num_labels)}
    return Mask2FormerConfig(backbone_config=backbone, num_labels=num_labels, num_queries=12,
                             hidden_dim=32, feature_size=32, mask_feature_size=32,
                             encoder_layers=1, decoder_layers=2, encoder_feedforward_dim=64,
                             dim_feedforward=64, num_attention_heads=2, common_stride=4,
                             use_pretrained_backbone=False, id2label=id2label,
                             label2id={v: k for k, v in id2label.items()})


def write_detector_dir(directory: str, *, seed: int = 0, num_labels: int = 80,
                       class_bias: float = 0.0):
    """A random Mask2Former in the release's layout (transformers' ``save_pretrained`` writes
    the 4.x key names of ``facebook/mask2former-swin-small-coco-instance``). ``class_bias``
    is added to the bias of the first class, to make confident detections."""
    from vargo.components.rewards.geneval import instance_model_class
    torch.manual_seed(seed)
    model = instance_model_class()(tiny_mask2former_config(num_labels)).eval()
    with torch.no_grad():
        model.class_predictor.bias[0] += class_bias
    model.save_pretrained(directory)
    return model


def write_clip(path: str, seed: int = 0) -> str:
    import open_clip
    from safetensors.torch import save_file
    torch.manual_seed(seed)
    model = open_clip.CLIP(**TINY_CLIP)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    return path
