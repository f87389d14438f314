# The quick-start job: GRPO with the JPEG-compressibility reward on a small random LlamaGen (CPU).
_base_ = [
    '../_base_/policies/llamagen-tiny_c2i.py', '../_base_/rewards/jpeg.py',
    '../_base_/algorithms/grpo.py', '../_base_/schedules/grpo_cpu_short.py',
    '../_base_/datasets/ten_classes.py', '../_base_/default_runtime.py'
]
default_hooks = dict(checkpoint=dict(interval=10))
