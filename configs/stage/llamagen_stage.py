# STAGE (arXiv 2509.25027) on LlamaGen-XL text-to-image stage 1 (256 px), the paper's HPS-run
# settings (official scripts/run_training_hps.py of krennic999/STAGE, which trains Janus-Pro-7B):
# G=8, lr 1e-6, beta 0.01, mu=1, no clip, AdamW with Hugging Face Trainer defaults (betas 0.9,
# 0.999, no weight decay) and its default linear decay to 0 over the 1600 steps, grad clip 1.0.
# Global batch as the HPS run: 8 GPUs x 2 prompts x G=8 = 128 images per optimizer step (official:
# 1 prompt per GPU and 2 gradient-accumulation steps).
#
# Reward: HPSv2.1 on the prompt. The official HPS run also adds GIT-VQA and GroundingDINO
# rewards (--reward_funcs hps git gdino), which vargo does not ship (docs/methods/stage.md).
# The entropy reward (weight 0.4) is STAGE's, kept here although the official HPS script
# disables it: with a continuous reward the group maximum is a single sample, whose centred
# bonus is exactly 0 (the head then skips its forwards), so it acts only on exact ties.
# Remove it with rewards=dict(_delete_=True, hps=<the base head>) in a child config.
#
# Rollout sampling: LlamaGen t2i's own default, CFG 7.5 with top-k 1000 (base config), not the
# paper's CFG 5 / no top-k: the paper's 5 is Janus-Pro's default inference CFG, i.e. STAGE trains
# the distribution the model is used with, and for LlamaGen t2i that is 7.5 / top-k 1000 (the
# setting its reported numbers use). The paper's literal values: --cfg-options
# sampler.cfg_scale=5.0 sampler.top_k=0. Log-probs from conditional logits (logprob_cfg='none',
# as the official code, which scores the CFG rollout with the conditional forward).
#
# Normalisation of the policy term: the official sum(w) runs over one group (one prompt per
# GPU); here too: the group_weighted_token_mean aggregation (configs/_base_/algorithms/
# stage.py) takes the weighted token mean within each group, then the mean over the groups, so
# two groups per rank give the same loss as one group per GPU.
_base_ = [
    '../_base_/policies/llamagen-xl_t2i_256.py', '../_base_/algorithms/stage.py',
    '../_base_/default_runtime.py'
]
# The training prompts: a user-supplied file (format: configs/stage/prompts_example.txt).
train_dataloader = dict(
    dataset=dict(type='PromptFileDataset', path='configs/stage/prompts_example.txt'),
    sampler=dict(type='ContiguousInfiniteSampler', shuffle=True),
    collate_fn=dict(type='default_collate'),
    num_workers=0)
# HPSv2.1 (scores the rollout's prompts) + STAGE's entropy reward on the group's tied maxima.
rewards = dict(
    hps=dict(type='StageEntropyBonus', weight=0.4,
             base=dict(type='HPSv2Reward', checkpoint='checkpoints/hps/HPS_v2.1_compressed.pt')))
# KL coefficient of the HPS run (GenEval: 0.03, the algorithm base's value).
regularizers = dict(kl=dict(beta=0.01))
group_size = 8
_max_iters = 1600
train_cfg = dict(type='GRPOLoop', max_iters=_max_iters, samples_per_rank=16, mu=1,
                 minibatch_samples=None)
optim_wrapper = dict(
    optimizer=dict(type='AdamW', lr=1e-6, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0),
    clip_grad=dict(max_norm=1.0))
param_scheduler = [dict(type='LinearLR', start_factor=1.0, end_factor=0.0, by_epoch=False,
                        begin=0, end=_max_iters)]
default_hooks = dict(checkpoint=dict(interval=100))
_shapes_alternative = 'python tools/train.py configs/stage/llamagen_stage_shapes.py'
