# The MAR twin of llamagen-tiny_grpo_jpeg.py: GRPO with the JPEG-compressibility reward on a small
# random MAR (c2i, 32 px, 16 continuous tokens, DDPM head); exercises the runner and
# tools/benchmark.py on the MAR family without weights. Each update recomputes a subset of the
# transitions (4 AR steps x 4 head steps), as MAR-GRPO's 12 x 10. Its lr is MAR's scale, not the
# tiny LlamaGen's 3e-4: a PPO ratio of a 16-channel Gaussian step moves fast.
_base_ = [
    '../_base_/policies/mar-tiny_c2i.py', '../_base_/rewards/jpeg.py',
    '../_base_/algorithms/grpo_mar.py', '../_base_/schedules/grpo_cpu_short.py',
    '../_base_/datasets/ten_classes.py', '../_base_/default_runtime.py'
]
sampler = dict(loss_ar_steps=4, loss_diffusion_steps=4)
optim_wrapper = dict(optimizer=dict(lr=1e-5))
default_hooks = dict(checkpoint=dict(interval=10))
