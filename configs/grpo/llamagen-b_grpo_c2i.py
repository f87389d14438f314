# GRPO on LlamaGen-B c2i 256 (official weights) with the JPEG-compressibility reward.
_base_ = [
    '../_base_/policies/llamagen-b_c2i_256.py', '../_base_/rewards/jpeg.py',
    '../_base_/algorithms/grpo.py', '../_base_/schedules/grpo_gpu_8xb16.py',
    '../_base_/datasets/imagenet_classes.py', '../_base_/default_runtime.py'
]
_shapes_alternative = 'python tools/train.py configs/grpo/llamagen_grpo_shapes.py'
