# GRPO on the Shapes benchmark's class-conditional VAR base model
# (components/benchmarks/weights/var_shapes_c2i.md), rewarded by ShapesEval, on a CPU: the VAR
# twin of llamagen_grpo_shapes.py (same reward, data, algorithm and schedule,
# configs/_base_/schedules/grpo_cpu_shapes.py). Results in model_zoo.md ("GRPO on Shapes").
#
# An action is a token; the 130 tokens of a sample are its 6 scales (1-2-3-4-6-8), sampled scale
# by scale. The base model, sampled without guidance as in its model card, draws a correct
# colour x shape about half of the time, so most groups hold both right and wrong samples and the
# group-normalised advantage has signal from the first iteration; without CFG no batch is doubled.
# 120 iterations, twice the schedule base's 60 (model_zoo.md reports this run and a longer one).
_base_ = [
    '../_base_/policies/var_shapes_c2i.py', '../_base_/rewards/shapes_c2i.py',
    '../_base_/algorithms/grpo.py', '../_base_/schedules/grpo_cpu_shapes.py',
    '../_base_/datasets/shapes_c2i.py', '../_base_/default_runtime.py'
]
# Sample as the base model's card (cfg_scale 1) and record log-probs of exactly that
# distribution, so the PPO ratio is 1 at the first minibatch (policy/logp_mismatch_max ~ 0).
sampler = dict(cfg_scale=1.0, logprob_cfg='rollout')
train_cfg = dict(max_iters=120)
default_hooks = dict(checkpoint=dict(interval=40), image_grid=dict(interval=40,
                                                                  preview_conditions=8))
