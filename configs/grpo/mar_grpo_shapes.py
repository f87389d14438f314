# GRPO on the Shapes benchmark's class-conditional MAR base (components/benchmarks/weights/
# mar_shapes_c2i.md: a flow-matching diffusion head over a small KL VAE's 8 x 8 continuous
# tokens), rewarded by ShapesEval, on a CPU. Each action is one Flow-GRPO SDE step of a token's
# head chain (a Gaussian, noise level 0.7); the transformer learns through the AR latent z.
# Unguided rollouts, as the base model's card measures it, with exactly on-policy log-probs.
# Each update recomputes 8 of the 16 AR steps x 12 of the 24 head transitions (MAR-GRPO's 12 x
# 10 subset at this scale; EvaluatedActionsSelector) and MAR-GRPO's KL on the Gaussian means.
# lr 5e-4, 60 iterations (the reward plateaus after ~40; measured to 120): at lr 1e-4 (4 x 8
# subset) the reward did not move in 38 iterations, at lr 1e-3 it fell from 0.20 to 0.04 in 20
# (measured, model_zoo.md). The reward rises at a price in image quality (FID 27 -> 84): read
# model_zoo.md before using this run as a MAR baseline.
_base_ = [
    '../_base_/policies/mar_shapes_c2i.py', '../_base_/rewards/shapes_c2i.py',
    '../_base_/algorithms/grpo_mar.py', '../_base_/schedules/grpo_cpu_short.py',
    '../_base_/datasets/shapes_c2i.py', '../_base_/default_runtime.py'
]
sampler = dict(loss_ar_steps=8, loss_diffusion_steps=12)
# 16 classes per iteration x G=8 samples; two optimizer steps of 64 samples (whole groups).
group_size = 8
train_cfg = dict(type='GRPOLoop', max_iters=60, samples_per_rank=128, mu=1, minibatch_samples=64)
optim_wrapper = dict(optimizer=dict(type='AdamW', lr=5e-4, betas=(0.9, 0.95), weight_decay=0.0),
                     clip_grad=dict(max_norm=1.0))
param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False)]
default_hooks = dict(checkpoint=dict(interval=30), image_grid=dict(interval=20, max_images=64,
                                                                  preview_conditions=8))
