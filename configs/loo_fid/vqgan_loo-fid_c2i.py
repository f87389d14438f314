# LOO-FID on taming-transformers' class-conditional ImageNet VQGAN transformer (the 1.4B "cin"
# model, 16 x 16 VQGAN f16 codes over 16384 entries, official weights), the paper's second family
# (arXiv 2603.23086; its released code has LlamaGen only). The recipe is the paper's, as in
# llamagen-l_loo-fid_c2i.py: CLIP + HPSv2.1 (A_comp) and the LOO-FID reward on Inception features
# (A_fid, weight 2, beta_ema 0.5), G=12, 12 classes per GPU, mu=2 whole-rollout epochs, 600
# iterations, AdamW lr 1e-5 (0.9, 0.95) wd 0.01, grad clip 1.0 (configs/_base_/schedules/
# loo_fid_b144.py), sequence-level ratio, eps 0.2, sequence-level KL beta 3.0, the adaptive entropy
# controller at V = 16384 (the cin codebook, the same V as LlamaGen's VQ-16).
#
# Where the paper is silent for VQGAN (its public text and code give no VQGAN sampler or
# hyper-parameters), LlamaGen's settings are carried over:
# * no guidance: the cin model has no null class (vargo refuses cfg_scale != 1 for it), so
#   LlamaGen's rollout CFG 1.5 cannot carry over (the paper's abstract reports competitive tuned
#   samples without CFG).
# * no truncation (top-k 0, top-p 1) as the LlamaGen paper config samples, not the taming
#   README's FID setting (top-k 600, top-p 0.92, the policy base's sampler): with it the
#   paper's log-probs (logprob_cfg='none': full-vocabulary conditional log-softmax) are exactly
#   the sampled distribution's, as they are for LlamaGen's conditional tokens.
# * the 600 iterations, lr 1e-5 and KL 3.0 of the LlamaGen runs, although the cin transformer
#   (1.4B) is four times GPT-L's size.
_base_ = [
    '../_base_/policies/vqgan-cin_c2i_256.py', '../_base_/rewards/clip_hps_imagenet.py',
    '../_base_/algorithms/loo_fid.py', '../_base_/schedules/loo_fid_b144.py',
    '../_base_/datasets/imagenet_classes.py', '../_base_/default_runtime.py'
]
sampler = dict(cfg_scale=1.0, top_k=0, top_p=1.0, logprob_cfg='none')
# The LOO-FID head: torch-fidelity's FID Inception-v3 (pool3, 2048-d) from a local file; real
# ImageNet statistics and the base model's sample statistics (bootstrap of the EMA, sampled with
# the sampler above) computed with the same extractor (configs/loo_fid/README.md shows how).
#   checkpoints/inception/weights-inception-2015-12-05-6726825d.pth
#     https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth
rewards = dict(
    fid=dict(type='LooFidReward', mode='ema_loo', beta_ema=0.5,
             feature_extractor='inception-v3-compat',
             feature_extractor_weights_path=(
                 'checkpoints/inception/weights-inception-2015-12-05-6726825d.pth'),
             real_stats_path='checkpoints/fid_stats/imagenet_train_inception.npz',
             init_stats_path='checkpoints/fid_stats/vqgan-cin_c2i_256_cfg1_inception.npz'))
default_hooks = dict(checkpoint=dict(interval=200), image_grid=dict(interval=100))
_shapes_alternative = 'python tools/train.py configs/loo_fid/vqgan_loo-fid_shapes.py'
