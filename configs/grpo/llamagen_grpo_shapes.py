# Vanilla GRPO on the Shapes benchmark's class-conditional LlamaGen base model
# (components/benchmarks/weights/llamagen_shapes_c2i.md), rewarded by ShapesEval, on a CPU. Its
# STAGE twin, configs/stage/llamagen_stage_shapes.py, is the README main job; results in
# model_zoo.md ("GRPO on Shapes").
#
# Why class-conditional: its base model samples a correct colour x shape about half of the time
# at CFG 2 (model card), so most groups hold both right and wrong samples and the
# group-normalised advantage has signal from the first iteration; one condition position and
# 64 tokens keep iterations short on a CPU. The text-conditional variant is
# llamagen_grpo_shapes-t2i.py. Schedule: configs/_base_/schedules/grpo_cpu_shapes.py.
_base_ = [
    '../_base_/policies/llamagen_shapes_c2i.py', '../_base_/rewards/shapes_c2i.py',
    '../_base_/algorithms/grpo.py', '../_base_/schedules/grpo_cpu_shapes.py',
    '../_base_/datasets/shapes_c2i.py', '../_base_/default_runtime.py'
]
# Sample with the base model's CFG 2 and record log-probs of exactly that distribution, so the
# PPO ratio is 1 at the first minibatch (policy/logp_mismatch_max ~ 0).
sampler = dict(cfg_scale=2.0, logprob_cfg='rollout')
default_hooks = dict(checkpoint=dict(interval=20), image_grid=dict(interval=20,
                                                                  preview_conditions=8))
