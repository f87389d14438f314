# VAR RL Done Right (arXiv 2601.02256; no code released) on VAR-d16 c2i 256 with the official
# FoundationVision/VAR weights (configs/_base_/policies/var-d16_c2i_256.py: download var_d16.pth
# and vae_ch160v4096z32.pth yourself), rewarded by HPSv3 (the paper's preference reward) on the
# prompt "a photo of a {class}". The paper trains NextFlow-7B on text prompts with OCR + HPSv3;
# OCR needs prompts with text to render, which class labels are not: the text-rendering setting
# is configs/var_rl/janus-pro-7b_var-rl_text.py. docs/methods/var_rl.md.
#
# The paper's settings: G=16, 16 conditions per update (8 GPUs x 2 conditions x G), AdamW
# (0.9, 0.95) with weight decay 0.05, lr 1e-5, up to 1200 updates; rollouts with CFG 5 (vargo
# cfg_scale 5 with VAR's ramp), top-k 2, top-p 0.9; conditional-only training log-probs
# (logprob_cfg='none'); PANW alpha 0.7; VMR with K=2, eta=1, 3 prefix : 1 suffix update.
# Not given by the paper (ours): the per-sample token mean and k3 KL beta 0.04 of vanilla GRPO
# (configs/_base_/algorithms/grpo.py; PANW's normalisation is exact under that aggregation),
# and the split m=6: scales 1-6 (91 of 680 tokens, a 6x6 grid, 3/8 of the final side), the
# relative position of the Shapes split (3x3 of 8x8), where the prefix decides about a quarter
# of the reward (tools/vmr_split.py; run it on these weights to choose your own).
# Mask propagation: no ImageNet reward reports regions, so its mask is the HPSv2.1 saliency
# with respect to each scale's code vectors (our formulation), the top 20% of cells per scale
# (quantile 0.8), background weight 0.05, renormalised per scale. The saliency head is HPSv2.1,
# a differentiable CLIP model (about 2 GB of weights more): differentiating the 7B HPSv3 reward
# at every scale would cost more than the update.
_base_ = [
    '../_base_/policies/var-d16_c2i_256.py', '../_base_/rewards/hpsv3.py',
    '../_base_/algorithms/grpo.py', '../_base_/schedules/grpo_gpu_8xb16.py',
    '../_base_/datasets/imagenet_classes.py', '../_base_/default_runtime.py'
]
_shapes_alternative = 'python tools/train.py configs/var_rl/var_var-rl_shapes.py'
group_size = 16
train_cfg = dict(max_iters=1200, samples_per_rank=32)
optim_wrapper = dict(optimizer=dict(lr=1e-5, betas=(0.9, 0.95), weight_decay=0.05))
sampler = dict(_delete_=True, type='VMRSampler', split_step=6, prefix_updates=3,
               suffix_updates=1,
               sampler=dict(type='NextScaleSampler', cfg_scale=5.0, temperature=1.0, top_k=2,
                            top_p=0.9, logprob_cfg='none'))
rewards = dict(_delete_=True, hpsv3=dict(
    type='VMRReward', num_completions=2, eta=1.0, include_rollout=True,
    head=dict(type='HPSv3Reward', checkpoint='checkpoints/hpsv3/HPSv3.safetensors',
              backbone_dir='checkpoints/Qwen2-VL-7B-Instruct', dtype='bfloat16',
              image_batch_size=4, class_names='imagenet', template='a photo of a {}')))
token_selectors = dict(
    panw=dict(type='ScaleAreaReweightSelector', alpha=0.7),
    mp=dict(type='MaskPropagationSelector', source='saliency', background=0.05,
            renormalize='per_step', quantile=0.8,
            saliency_reward=dict(type='HPSv2Reward',
                                 checkpoint='checkpoints/hps/HPS_v2.1_compressed.pt',
                                 class_names='imagenet', templates='a photo of a {}')))
