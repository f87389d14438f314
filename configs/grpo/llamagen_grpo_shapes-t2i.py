# GRPO on the Shapes benchmark's text-conditional LlamaGen base model
# (components/benchmarks/weights/llamagen_shapes_t2i.md): compositional prompts (counting, colour
# binding, relative position) through the tiny frozen T5, rewarded by ShapesEval's soft score.
# Train prompts only; tools/eval.py also scores the held-out 'eval' prompts (colour-shape pairs
# never seen in training), which is where generalisation shows. Schedule and sampling as
# llamagen_grpo_shapes.py (configs/_base_/schedules/grpo_cpu_shapes.py; CFG 2 with exactly
# on-policy log-probs), so the two compare.
_base_ = [
    '../_base_/policies/llamagen_shapes_t2i.py', '../_base_/rewards/shapes_t2i.py',
    '../_base_/algorithms/grpo.py', '../_base_/schedules/grpo_cpu_shapes.py',
    '../_base_/datasets/shapes_t2i.py', '../_base_/default_runtime.py'
]
sampler = dict(cfg_scale=2.0, logprob_cfg='rollout')
default_hooks = dict(checkpoint=dict(interval=20), image_grid=dict(interval=20,
                                                                  preview_conditions=8))
