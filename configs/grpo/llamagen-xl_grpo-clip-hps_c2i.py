# An AR-GRPO-style baseline (the GRPO settings of docs/methods/grpo.md: token-level, BNPO mean) for
# the LOO-FID comparison: LlamaGen GPT-XL c2i 384, instance rewards only (CLIP ViT-L-14 +
# HPSv2.1 summed, configs/_base_/rewards/clip_hps_imagenet.py), rollout CFG 2, G=8, token-level
# ratio with PPO clip 0.2, token-mean aggregation over the batch, k3 KL beta 0.1, AdamW lr 1e-5.
_base_ = [
    '../_base_/policies/llamagen-xl_c2i_384.py', '../_base_/rewards/clip_hps_imagenet.py',
    '../_base_/algorithms/grpo.py', '../_base_/schedules/grpo_gpu_8xb16.py',
    '../_base_/datasets/imagenet_classes.py', '../_base_/default_runtime.py'
]
sampler = dict(cfg_scale=2.0, logprob_cfg='none')
objective = dict(aggregation='token_mean')
regularizers = dict(kl=dict(beta=0.1, aggregation='token_mean'))
_shapes_alternative = 'python tools/train.py configs/grpo/llamagen_grpo_shapes.py'
