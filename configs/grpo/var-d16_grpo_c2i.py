# GRPO on VAR-d16 c2i 256 (official FoundationVision/VAR weights, configs/_base_/policies/
# var-d16_c2i_256.py: download var_d16.pth and vae_ch160v4096z32.pth yourself) with the instance
# rewards CLIP ViT-L-14 + HPSv2.1 summed into one head (configs/_base_/rewards/
# clip_hps_imagenet.py): the AR-GRPO-style baseline of llamagen-xl_grpo-clip-hps_c2i.py on VAR
# (GRPO settings of docs/methods/grpo.md: token-level ratio, PPO clip 0.2, token-mean
# aggregation, k3 KL beta 0.1, G=8, AdamW lr 1e-5), the starting point of VAR RL Done Right
# (docs/methods/var_rl.md). Rollouts use the base config's sampler, VAR's FID setting
# (cfg 1.5 of the official code = cfg_scale 2.5 with its per-scale ramp, top-k 900, top-p 0.96);
# log-probs from conditional logits, as the papers train.
_base_ = [
    '../_base_/policies/var-d16_c2i_256.py', '../_base_/rewards/clip_hps_imagenet.py',
    '../_base_/algorithms/grpo_token_mean.py', '../_base_/schedules/grpo_gpu_8xb16.py',
    '../_base_/datasets/imagenet_classes.py', '../_base_/default_runtime.py'
]
_shapes_alternative = 'python tools/train.py configs/grpo/var_grpo_shapes.py'
