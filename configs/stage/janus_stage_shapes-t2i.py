# STAGE on its own system's architecture at Shapes size: the text-conditional Shapes base in
# Janus-Pro's architecture (configs/_base_/policies/janus_shapes_t2i.py; model card
# components/benchmarks/weights/janus_shapes_t2i.md), rewarded by ShapesEval's soft score (the
# GenEval-like reward of the paper's GenEval run) on a CPU. As the paper: only the language model
# trains (the generation embedding, aligner and head, the VQ and the understanding encoder stay
# frozen), similarity reweighting from the VQ's codebook vectors of the sampled tokens, k3 KL beta
# 0.03 and the entropy reward (0.4) on the samples tied at the group max.
# Everything else as configs/stage/llamagen_stage_shapes-t2i.py (the same prompts, schedule,
# reward and CFG), so the two compare the conditioning (prompt in the sequence vs a T5 prefix):
# 60 iterations of 16 prompts x G=8, AdamW lr 1e-4, one optimizer step per iteration (STAGE has
# no clip and runs on-policy), rollouts with CFG 2 from Janus-Pro's pad-token unconditional prompt
# and log-probs of exactly that distribution (logprob_cfg='rollout'; the paper's 7B config keeps
# conditional log-probs, see docs/design.md, "Off-policy log-probs under CFG").
_base_ = [
    '../_base_/policies/janus_shapes_t2i.py', '../_base_/rewards/shapes_t2i.py',
    '../_base_/algorithms/stage.py', '../_base_/schedules/grpo_cpu_shapes.py',
    '../_base_/datasets/shapes_t2i.py', '../_base_/default_runtime.py'
]
sampler = dict(cfg_scale=2.0, logprob_cfg='rollout')
rewards = dict(shapes=dict(_delete_=True, type='StageEntropyBonus', weight=0.4,
                           base=dict(type='ShapesEvalReward', task='t2i')))
train_cfg = dict(minibatch_samples=None)
default_hooks = dict(checkpoint=dict(interval=20), image_grid=dict(interval=20,
                                                                  preview_conditions=8))
