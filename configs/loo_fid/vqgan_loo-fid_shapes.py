# LOO-FID on the Shapes benchmark's class-conditional VQGAN-transformer base model
# (components/benchmarks/weights/vqgan_shapes_c2i.md): the VQGAN twin of
# llamagen_loo-fid_shapes.py -- the paper's recipe (configs/_base_/algorithms/loo_fid.py) with
# ShapesEval as the instance reward (A_comp) and the leave-one-out FID on the Shapes feature
# extractor against the real 'train' statistics (A_fid, weight 2); G=12, mu=2 whole-rollout
# epochs, sequence-level ratio and KL (beta 3.0), beta_ema 0.5, the adaptive entropy controller
# (V = 512 here). CPU-sized as the LlamaGen twin: 12 classes x 12 samples, 50 iterations, lr 1e-4.
# Its instance-only twin is vqgan_loo-fid-instance-only_shapes.py (configs/loo_fid/README.md).
_base_ = [
    '../_base_/policies/vqgan_shapes_c2i.py', '../_base_/rewards/shapes_c2i.py',
    '../_base_/algorithms/loo_fid.py', '../_base_/schedules/loo_fid_b144.py',
    '../_base_/datasets/shapes_c2i.py', '../_base_/default_runtime.py'
]
# No guidance (the model has no null class; the LlamaGen twin samples at CFG 1.5) and, as the
# base model's card, no truncation: the log-probs are exactly the sampled distribution's.
sampler = dict(cfg_scale=1.0, logprob_cfg='rollout')
rewards = dict(
    fid=dict(type='LooFidReward', mode='ema_loo', beta_ema=0.5, feature_extractor='vargo-shapes',
             real_stats_path='components/benchmarks/weights/shapes_real_stats.npz',
             real_stats_prefix='c2i_train_'))
# Entropy target: the paper's 0.78 assumes a 16k-code model; the base's normalised entropy (ln 512)
# under this unguided sampler is 0.083 (`python tools/eval.py configs/loo_fid/
# vqgan_loo-fid_shapes.py`, entropy/normalized, 576 samples, seed 0), so at 0.78 the controller
# would sit at its 4e-3 maximum for the whole run. 0.08 keeps the base's level: the coefficient
# grows only when the policy's entropy falls below it (deadband 0.015).
regularizers = dict(entropy=dict(vocab_size=512, target=0.08))
# CPU-sized: 50 iterations at lr 1e-4 instead of the paper's 600 at 1e-5.
train_cfg = dict(max_iters=50)
optim_wrapper = dict(optimizer=dict(lr=1e-4))
default_hooks = dict(checkpoint=dict(interval=25), image_grid=dict(interval=25, max_images=72,
                                                                  preview_conditions=8))
