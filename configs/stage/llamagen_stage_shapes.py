# The README main job: STAGE on the Shapes benchmark's class-conditional LlamaGen base
# (components/benchmarks/weights/llamagen_shapes_c2i.md), rewarded by ShapesEval, on a CPU:
# similarity reweighting of the policy and KL terms (SimilarityReweightSelector, weighted token
# mean within each group), beta 0.03 (algorithm base: the paper's GenEval run) and the entropy
# reward (0.4) on the samples tied at the group maximum.
#
# Why class-conditional: the base model draws the class's colour x shape about half of the time
# (ShapesEval strict 0.53 at CFG 2), so groups hold both right and wrong samples from the first
# iteration and the reward visibly rises in minutes (0.53 -> 0.86 in 60 iterations, model_zoo.md).
# Two things to know when reading the result (configs/stage/README.md, "Shapes, class-conditional"):
# the reward is 0/1 here, so most samples tie at the group maximum, but policy and reference
# entropies stay close and the entropy reward is tiny (|0.4 (e - mean e)| ~ 1e-3); and the
# similarity weights put the update on the few tokens where right and wrong samples differ (the
# black background gets weight ~0); on these mostly-black images the run drew nearly every shape
# in the top-left corner (recall 0.69 -> 0.03 / 0.23 on seeds 0 / 1; 0.46 / 0.33 without the
# reweighting, 0.43 / 0.48 with GRPO). The
# paper-like comparison on compositional prompts is llamagen_stage_shapes-t2i.py and its
# ablations.
#
# Schedule and optimizer as configs/grpo/llamagen_grpo_shapes.py except one optimizer step per
# iteration: STAGE has no clip and runs on-policy (mu=1, ratio 1), and a second step on the same
# rollout would be off-policy with nothing to bound it. CFG-2 rollouts scored with log-probs of
# exactly that distribution (logprob_cfg='rollout'; docs/design.md, "Off-policy log-probs under
# CFG"); the entropy reward uses the paper's conditional, full-vocabulary entropy.
_base_ = [
    '../_base_/policies/llamagen_shapes_c2i.py', '../_base_/rewards/shapes_c2i.py',
    '../_base_/algorithms/stage.py', '../_base_/schedules/grpo_cpu_short.py',
    '../_base_/datasets/shapes_c2i.py', '../_base_/default_runtime.py'
]
sampler = dict(cfg_scale=2.0, logprob_cfg='rollout')
rewards = dict(shapes=dict(_delete_=True, type='StageEntropyBonus', weight=0.4,
                           base=dict(type='ShapesEvalReward', task='c2i')))
# 16 classes per iteration x G=8 samples, one optimizer step on all 128.
group_size = 8
train_cfg = dict(type='GRPOLoop', max_iters=60, samples_per_rank=128, mu=1, minibatch_samples=None)
optim_wrapper = dict(optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.95), weight_decay=0.0),
                     clip_grad=dict(max_norm=1.0))
param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False)]
default_hooks = dict(checkpoint=dict(interval=20), image_grid=dict(interval=20, max_images=64,
                                                                  preview_conditions=8))
