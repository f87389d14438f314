# GRPO on the Shapes benchmark's class-conditional VQGAN-transformer base model (taming's minGPT
# over a small VQGAN's 8 x 8 codes; components/benchmarks/weights/vqgan_shapes_c2i.md), rewarded
# by ShapesEval, on a CPU: the VQGAN twin of llamagen_grpo_shapes.py (same reward, data,
# algorithm and schedule, configs/_base_/schedules/grpo_cpu_shapes.py: G=8, 128 samples per
# iteration, 60 iterations). Results in model_zoo.md ("GRPO on Shapes").
#
# The taming transformer has no null class, so no guidance: rollouts are sampled as the base
# model's card (cfg_scale 1, no truncation), where LlamaGen's twin samples at CFG 2.
_base_ = [
    '../_base_/policies/vqgan_shapes_c2i.py', '../_base_/rewards/shapes_c2i.py',
    '../_base_/algorithms/grpo.py', '../_base_/schedules/grpo_cpu_shapes.py',
    '../_base_/datasets/shapes_c2i.py', '../_base_/default_runtime.py'
]
# Log-probs of exactly the distribution sampled, so the PPO ratio is 1 at the first minibatch
# (policy/logp_mismatch_max ~ 0).
sampler = dict(cfg_scale=1.0, logprob_cfg='rollout')
default_hooks = dict(checkpoint=dict(interval=20), image_grid=dict(interval=20,
                                                                  preview_conditions=8))
