# GRPO on the Shapes benchmark's class-conditional VAR base model
# (components/benchmarks/weights/var_shapes_c2i.md), rewarded by ShapesEval, on a CPU: the VAR
# twin of llamagen_grpo_shapes.py (same reward, data, algorithm and schedule family).
#
# An action is a token; the 130 tokens of a sample are its 6 scales (1-2-3-4-6-8), sampled scale
# by scale. The base model, sampled without guidance as in its model card, draws a correct
# colour x shape about half of the time (ShapesEval strict 0.54), so most groups hold both right
# and wrong samples and the group-normalised advantage has signal from the first iteration;
# without CFG no batch is doubled.
_base_ = [
    '../_base_/policies/var_shapes_c2i.py', '../_base_/rewards/shapes_c2i.py',
    '../_base_/algorithms/grpo.py', '../_base_/schedules/grpo_cpu_short.py',
    '../_base_/datasets/shapes_c2i.py', '../_base_/default_runtime.py'
]
# Sample as the base model's card (cfg_scale 1) and record log-probs of exactly that
# distribution, so the PPO ratio is 1 at the first minibatch (policy/logp_mismatch_max ~ 0).
sampler = dict(cfg_scale=1.0, logprob_cfg='rollout')
# 16 classes per iteration x G=8 samples; two optimizer steps of 64 samples (whole groups);
# about 4 s per iteration on 2 shared CPU cores, 120 iterations in about 9 minutes. Measured
# (tools/eval.py, 576 samples, seed 0): ShapesEval strict 0.545 -> 0.731, FID 5.11 -> 4.81.
group_size = 8
train_cfg = dict(type='GRPOLoop', max_iters=120, samples_per_rank=128, mu=1, minibatch_samples=64)
optim_wrapper = dict(optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.95), weight_decay=0.0),
                     clip_grad=dict(max_norm=1.0))
param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False)]
default_hooks = dict(checkpoint=dict(interval=40), image_grid=dict(interval=40, max_images=64,
                                                                  preview_conditions=8))
