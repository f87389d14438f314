# GRPO on the Shapes benchmark's text-conditional LlamaGen base model
# (components/benchmarks/weights/llamagen_shapes_t2i.md): compositional prompts (counting, colour
# binding, relative position) through the tiny frozen T5, rewarded by ShapesEval's soft score.
# Train prompts only; tools/eval.py also scores the held-out 'eval' prompts (colour-shape pairs
# never seen in training), which is where generalisation shows.
_base_ = [
    '../_base_/policies/llamagen_shapes_t2i.py', '../_base_/rewards/shapes_t2i.py',
    '../_base_/algorithms/grpo.py', '../_base_/schedules/grpo_cpu_short.py',
    '../_base_/datasets/shapes_t2i.py', '../_base_/default_runtime.py'
]
sampler = dict(cfg_scale=2.0, logprob_cfg='rollout')
group_size = 8
train_cfg = dict(type='GRPOLoop', max_iters=60, samples_per_rank=128, mu=1, minibatch_samples=64)
optim_wrapper = dict(optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.95), weight_decay=0.0),
                     clip_grad=dict(max_norm=1.0))
param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False)]
default_hooks = dict(checkpoint=dict(interval=20), image_grid=dict(interval=20, max_images=64,
                                                                  preview_conditions=8))
