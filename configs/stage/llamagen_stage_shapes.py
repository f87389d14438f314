# The README main job: STAGE on the Shapes benchmark's class-conditional LlamaGen base
# (components/benchmarks/weights/llamagen_shapes_c2i.md), rewarded by ShapesEval, on a CPU:
# similarity reweighting of the policy and KL terms (SimilarityReweightSelector, weighted token
# mean within each group), beta 0.03 (algorithm base: the paper's GenEval run) and the entropy
# reward (0.4) on the samples tied at the group maximum.
#
# Why class-conditional: the base model draws the class's colour x shape about half of the time
# at CFG 2 (model card), so groups hold both right and wrong samples from the first iteration
# and the reward visibly rises in minutes. Read the result with configs/stage/README.md
# ("Shapes, class-conditional"), which has the measurements: the reward is 0/1 here, so most
# samples tie at the group maximum; the entropy bonus is tiny (policy and reference entropies
# stay close) but in a group where every sample tied it is the only spread, and group
# normalisation makes those advantages of order 1; the similarity weights put the update on the
# few tokens where right and wrong samples differ (the black background gets weight ~0). The
# paper-like comparison on compositional prompts is llamagen_stage_shapes-t2i.py and its
# ablations.
#
# Schedule and optimizer as configs/grpo/llamagen_grpo_shapes.py
# (configs/_base_/schedules/grpo_cpu_shapes.py) except one optimizer step on all 128 samples per
# iteration: STAGE has no clip and runs on-policy (mu=1, ratio 1), and a second step on the same
# rollout would be off-policy with nothing to bound it. CFG-2 rollouts scored with log-probs of
# exactly that distribution (logprob_cfg='rollout'; docs/design.md, "Off-policy log-probs under
# CFG"); the entropy reward uses the paper's conditional, full-vocabulary entropy.
_base_ = [
    '../_base_/policies/llamagen_shapes_c2i.py', '../_base_/rewards/shapes_c2i.py',
    '../_base_/algorithms/stage.py', '../_base_/schedules/grpo_cpu_shapes.py',
    '../_base_/datasets/shapes_c2i.py', '../_base_/default_runtime.py'
]
sampler = dict(cfg_scale=2.0, logprob_cfg='rollout')
rewards = dict(shapes=dict(_delete_=True, type='StageEntropyBonus', weight=0.4,
                           base=dict(type='ShapesEvalReward', task='c2i')))
train_cfg = dict(minibatch_samples=None)
default_hooks = dict(checkpoint=dict(interval=20), image_grid=dict(interval=20,
                                                                  preview_conditions=8))
