# The VAR twin of the quick-start job llamagen-tiny_grpo_jpeg.py: GRPO with the JPEG-compressibility
# reward on a small random VAR (scales 1-2-4-8, CPU); used by tools/benchmark.py's tests.
_base_ = [
    '../_base_/policies/var-tiny_c2i.py', '../_base_/rewards/jpeg.py',
    '../_base_/algorithms/grpo.py', '../_base_/schedules/grpo_cpu_short.py',
    '../_base_/datasets/ten_classes.py', '../_base_/default_runtime.py'
]
default_hooks = dict(checkpoint=dict(interval=10))
