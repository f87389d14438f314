# GRPO on the Shapes benchmark's class-conditional MAR base (components/benchmarks/weights/
# mar_shapes_c2i.md: a flow-matching diffusion head over a small KL VAE's 8 x 8 continuous
# tokens), rewarded by ShapesEval, on a CPU. Each action is one Flow-GRPO SDE step of a token's
# head chain (a Gaussian, noise level 0.7); the transformer learns through the AR latent z.
# Unguided rollouts, as the base model's card samples, with exactly on-policy log-probs.
# Each update recomputes 8 of the 16 AR steps x 12 of the 24 head transitions (MAR-GRPO's 12 x
# 10 subset at this scale; EvaluatedActionsSelector) and MAR-GRPO's KL on the Gaussian means.
# Schedule as llamagen_grpo_shapes.py (configs/_base_/schedules/grpo_cpu_shapes.py) except lr
# 5e-4: a lower lr did not move the reward within the budget and a higher one made it collapse
# (model_zoo.md, "GRPO on Shapes", with the numbers). The reward rises at a price in image
# quality: read model_zoo.md before using this run as a MAR baseline.
_base_ = [
    '../_base_/policies/mar_shapes_c2i.py', '../_base_/rewards/shapes_c2i.py',
    '../_base_/algorithms/grpo_mar.py', '../_base_/schedules/grpo_cpu_shapes.py',
    '../_base_/datasets/shapes_c2i.py', '../_base_/default_runtime.py'
]
sampler = dict(loss_ar_steps=8, loss_diffusion_steps=12)
optim_wrapper = dict(optimizer=dict(lr=5e-4))
default_hooks = dict(checkpoint=dict(interval=30), image_grid=dict(interval=20,
                                                                  preview_conditions=8))
