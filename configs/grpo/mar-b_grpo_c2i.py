# GRPO on MAR-B c2i 256 (official LTH14/mar weights, configs/_base_/policies/mar-b_c2i_256.py:
# download mar_base.pth and kl16.ckpt yourself) with the instance rewards CLIP ViT-L-14 + HPSv2.1
# summed into one head: the vanilla-GRPO baseline of MAR-GRPO (arXiv 2604.06966,
# docs/methods/mar_grpo.md) on the class-conditional MAR. The action is one stochastic step of a
# token's DDPM head chain (a Gaussian with the head's learned-range variance); the transformer gets
# gradients through the AR latent z.
# MAR-GRPO's settings: G=4, constant lr 1e-6, 64 AR steps x 25 head steps per rollout, each
# update recomputing 12 AR steps x 10 diffusion steps (the sampler draws the subset,
# EvaluatedActionsSelector restricts both loss terms to it), PPO clip 0.2, MAR-GRPO's KL: k3 of
# the difference of the reference's and the policy's Gaussian means, beta 0.01
# (GaussianMeanKLRegularizer; k3 on the transition log-probs overflows at the late, tiny-variance
# head steps), rollout CFG 2.9 linear (MAR-B's FID setting; the paper's t2i runs use 3-5) with
# log-probs of the guided transitions sampled.
_base_ = [
    '../_base_/policies/mar-b_c2i_256.py', '../_base_/rewards/clip_hps_imagenet.py',
    '../_base_/algorithms/grpo_mar.py', '../_base_/schedules/grpo_gpu_8xb16.py',
    '../_base_/datasets/imagenet_classes.py', '../_base_/default_runtime.py'
]
# MAR-GRPO scores each transition with the variance the rollout drew it with (no gradient through
# the head's learned-range variance; docs/methods/mar_grpo.md)
policy = dict(logprob_sigma='stored')
sampler = dict(loss_ar_steps=12, loss_diffusion_steps=10)
objective = dict(aggregation='token_mean')
regularizers = dict(kl=dict(aggregation='token_mean'))
group_size = 4
train_cfg = dict(max_iters=1200)
optim_wrapper = dict(optimizer=dict(lr=1e-6))
_shapes_alternative = 'python tools/train.py configs/grpo/mar_grpo_shapes.py'
