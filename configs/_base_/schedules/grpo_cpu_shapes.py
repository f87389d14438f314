# The Shapes CPU schedule: 60 iterations of 128 samples (16 conditions x G=8), two optimizer
# steps of 64 samples (whole groups) each, AdamW lr 1e-4. G=8 and 16 conditions give each group
# both right and wrong samples of a base model that is right about half of the time, at a size
# that runs in minutes on 2 CPU cores.
_base_ = ['./grpo_cpu_short.py']
group_size = 8
train_cfg = dict(max_iters=60, samples_per_rank=128, minibatch_samples=64)
optim_wrapper = dict(optimizer=dict(lr=1e-4))
