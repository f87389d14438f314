# An AR-GRPO-style baseline for the LOO-FID comparison: LlamaGen GPT-XL c2i 384 with instance
# rewards only (CLIP ViT-L-14 + HPSv2.1 summed, configs/_base_/rewards/clip_hps_imagenet.py) and
# the GRPO settings of docs/methods/grpo.md (token-level ratio, PPO clip 0.2, token-mean
# aggregation, k3 KL beta 0.1: configs/_base_/algorithms/grpo_token_mean.py), G=8, AdamW lr 1e-5.
# Rollout CFG 2 (the policy base samples at LlamaGen's default 4); log-probs from conditional
# logits (policy base), as the papers train.
_base_ = [
    '../_base_/policies/llamagen-xl_c2i_384.py', '../_base_/rewards/clip_hps_imagenet.py',
    '../_base_/algorithms/grpo_token_mean.py', '../_base_/schedules/grpo_gpu_8xb16.py',
    '../_base_/datasets/imagenet_classes.py', '../_base_/default_runtime.py'
]
sampler = dict(cfg_scale=2.0)
_shapes_alternative = 'python tools/train.py configs/grpo/llamagen_grpo_shapes.py'
