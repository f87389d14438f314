# GRPO on the Shapes benchmark's text-conditional base in Janus-Pro's architecture
# (configs/_base_/policies/janus_shapes_t2i.py; model card
# components/benchmarks/weights/janus_shapes_t2i.md): the prompt in Janus-Pro's chat template
# inside the sequence, rewarded by ShapesEval's soft score. Only the language model trains, as
# STAGE trains Janus-Pro. Schedule and sampling as llamagen_grpo_shapes-t2i.py
# (configs/_base_/schedules/grpo_cpu_shapes.py: 60 iterations of 16 prompts x G=8, clip 0.2, two
# optimizer steps of 64 samples, AdamW lr 1e-4; CFG 2 from the pad-token prompt with exactly
# on-policy log-probs), so the two families compare.
_base_ = [
    '../_base_/policies/janus_shapes_t2i.py', '../_base_/rewards/shapes_t2i.py',
    '../_base_/algorithms/grpo.py', '../_base_/schedules/grpo_cpu_shapes.py',
    '../_base_/datasets/shapes_t2i.py', '../_base_/default_runtime.py'
]
sampler = dict(cfg_scale=2.0, logprob_cfg='rollout')
default_hooks = dict(checkpoint=dict(interval=20), image_grid=dict(interval=20,
                                                                  preview_conditions=8))
