# STAGE on the Shapes benchmark's text-conditional LlamaGen base
# (components/benchmarks/weights/llamagen_shapes_t2i.md), rewarded by ShapesEval's soft score, on
# a CPU. The GenEval-like reward makes this the port of the paper's GenEval run: similarity
# reweighting, beta 0.03 (algorithm base) and the entropy reward (0.4) on the samples tied at the
# group max (frequent here: ShapesEval scores take few values).
# Schedule and optimizer as configs/grpo/llamagen_grpo_shapes-t2i.py
# (configs/_base_/schedules/grpo_cpu_shapes.py, so the two compare), except one optimizer step
# per iteration: STAGE has no clip and runs on-policy (mu=1, ratio 1), and a
# second step on the same rollout would be off-policy with nothing to bound it.
# Rollouts with CFG 2 and log-probs of exactly that distribution (logprob_cfg='rollout'): scoring
# CFG rollouts with conditional logits made the Shapes reward fall (docs/design.md, "Off-policy
# log-probs under CFG"). The entropy reward still uses the conditional, full-vocabulary entropy
# of the paper.
_base_ = [
    '../_base_/policies/llamagen_shapes_t2i.py', '../_base_/rewards/shapes_t2i.py',
    '../_base_/algorithms/stage.py', '../_base_/schedules/grpo_cpu_shapes.py',
    '../_base_/datasets/shapes_t2i.py', '../_base_/default_runtime.py'
]
sampler = dict(cfg_scale=2.0, logprob_cfg='rollout')
rewards = dict(shapes=dict(_delete_=True, type='StageEntropyBonus', weight=0.4,
                           base=dict(type='ShapesEvalReward', task='t2i')))
train_cfg = dict(minibatch_samples=None)
default_hooks = dict(checkpoint=dict(interval=20), image_grid=dict(interval=20,
                                                                  preview_conditions=8))
