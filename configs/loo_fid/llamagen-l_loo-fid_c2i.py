# LOO-FID on LlamaGen GPT-L c2i 256 with the paper's settings (arXiv 2603.23086; official
# train.sh / grpo.py of bugrabaran/ar-policy-tuning): CLIP + HPSv2.1 (A_comp) and the LOO-FID
# reward on Inception features (A_fid, weight 2), G=12, 12 classes per GPU, mu=2 epochs over the
# whole rollout (one optimizer step each), 600 iterations, AdamW lr 1e-5 (0.9, 0.95) wd 0.01,
# grad clip 1.0 (configs/_base_/schedules/loo_fid_b144.py), sequence-level ratio, eps 0.2, KL
# beta 3.0, rollout CFG 1.5 with the policy base's top-k 0, top-p 1.
_base_ = [
    '../_base_/policies/llamagen-l_c2i_256.py', '../_base_/rewards/clip_hps_imagenet.py',
    '../_base_/algorithms/loo_fid.py', '../_base_/schedules/loo_fid_b144.py',
    '../_base_/datasets/imagenet_classes.py', '../_base_/default_runtime.py'
]
sampler = dict(cfg_scale=1.5)
# The LOO-FID head: torch-fidelity's FID Inception-v3 (pool3, 2048-d) from a local file; real
# ImageNet statistics and the base model's sample statistics (bootstrap of the EMA) computed with
# the same extractor (configs/loo_fid/README.md shows how).
#   checkpoints/inception/weights-inception-2015-12-05-6726825d.pth
#     https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth
rewards = dict(
    fid=dict(type='LooFidReward', mode='ema_loo', beta_ema=0.5,
             feature_extractor='inception-v3-compat',
             feature_extractor_weights_path=(
                 'checkpoints/inception/weights-inception-2015-12-05-6726825d.pth'),
             real_stats_path='checkpoints/fid_stats/imagenet_train_inception.npz',
             init_stats_path='checkpoints/fid_stats/llamagen-l_c2i_256_cfg1.5_inception.npz'))
default_hooks = dict(checkpoint=dict(interval=200), image_grid=dict(interval=100))
_shapes_alternative = 'python tools/train.py configs/loo_fid/llamagen_loo-fid_shapes.py'
