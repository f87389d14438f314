# Vanilla GRPO on the Shapes benchmark's class-conditional LlamaGen base model
# (components/benchmarks/weights/llamagen_shapes_c2i.md), rewarded by ShapesEval, on a CPU. Its
# STAGE twin, configs/stage/llamagen_stage_shapes.py, is the README main job.
#
# Why class-conditional: its base model samples a correct colour x shape about half of the time
# (ShapesEval strict 0.54 at CFG 2), so most groups hold both right and wrong samples and the
# group-normalised advantage has signal from the first iteration; one condition position and
# 64 tokens keep an iteration at about a second on 2 cores. The text-conditional variant is
# llamagen_grpo_shapes-t2i.py.
_base_ = [
    '../_base_/policies/llamagen_shapes_c2i.py', '../_base_/rewards/shapes_c2i.py',
    '../_base_/algorithms/grpo.py', '../_base_/schedules/grpo_cpu_short.py',
    '../_base_/datasets/shapes_c2i.py', '../_base_/default_runtime.py'
]
# Sample with the base model's CFG 2 and record log-probs of exactly that distribution, so the
# PPO ratio is 1 at the first minibatch (policy/logp_mismatch_max ~ 0).
sampler = dict(cfg_scale=2.0, logprob_cfg='rollout')
# 16 classes per iteration x G=8 samples; two optimizer steps of 64 samples (whole groups).
group_size = 8
train_cfg = dict(type='GRPOLoop', max_iters=60, samples_per_rank=128, mu=1, minibatch_samples=64)
optim_wrapper = dict(optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.95), weight_decay=0.0),
                     clip_grad=dict(max_norm=1.0))
param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False)]
default_hooks = dict(checkpoint=dict(interval=20), image_grid=dict(interval=20, max_images=64,
                                                                  preview_conditions=8))
