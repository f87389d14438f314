# STAGE (arXiv 2509.25027) on Janus-Pro-7B, the paper's own system, with the GenEval run's
# settings (official scripts/run_training_geneval.py of krennic999/STAGE): G=8, lr 5e-6, beta
# 0.03, entropy reward on (weight 0.4), mu=1 without clip, similarity reweighting of the policy
# and KL terms, rollout CFG 5 / temperature 1 / no top-k, 1600 steps, grad clip 1.0, AdamW with
# Hugging Face Trainer defaults (betas 0.9, 0.999, no weight decay) and its linear decay to 0.
# Global batch as the GenEval run: 8 GPUs x 1 prompt x G=8 = 64 images per optimizer step.
# Prompt template: STAGE's trainer writes the roles "User" / "Assistant" (Janus-Pro's README:
# "<|User|>" / "<|Assistant|>", the policy's default).
#
# REWARD: NOT GenEval. GenEval's detector-based scorer is not in vargo yet (issue 20, which will
# put it here). Until then this config trains on the reward it can have today, the CLIP score of
# the image and its prompt (OpenCLIP ViT-L-14, OpenAI weights), the closest available measure of
# prompt faithfulness, wrapped in STAGE's entropy reward. The head is named `clip_not_geneval`,
# so every logged reward (train/reward/clip_not_geneval/...) and report says what was optimised.
# Results of this config are not the paper's GenEval numbers.
#
# Files (download yourself; nothing is downloaded at run time; a missing one fails at start):
#   checkpoints/Janus-Pro-7B/   https://huggingface.co/deepseek-community/Janus-Pro-7B
#   checkpoints/clip/open_clip_pytorch_model.bin
#       https://huggingface.co/timm/vit_large_patch14_clip_224.openai
_base_ = [
    '../_base_/policies/janus-pro-7b.py', '../_base_/algorithms/stage.py',
    '../_base_/default_runtime.py'
]
policy = dict(roles=('User', 'Assistant'))
# The training prompts: a user-supplied file (format: configs/stage/prompts_example.txt; STAGE's
# GenEval run trains on data/janus_geneval_prompts/evaluation_metadata_flow_grpo.json, see
# configs/stage/README.md for the conversion).
train_dataloader = dict(
    dataset=dict(type='PromptFileDataset', path='configs/stage/prompts_example.txt'),
    sampler=dict(type='ContiguousInfiniteSampler', shuffle=True),
    collate_fn=dict(type='default_collate'),
    num_workers=0)
rewards = dict(
    clip_not_geneval=dict(
        type='StageEntropyBonus', weight=0.4,
        base=dict(type='ClipScoreReward', arch='ViT-L-14', weights_tag='openai',
                  checkpoint='checkpoints/clip/open_clip_pytorch_model.bin')))
# beta 0.03: the algorithm base's value (the GenEval run's)
group_size = 8
_max_iters = 1600
train_cfg = dict(type='GRPOLoop', max_iters=_max_iters, samples_per_rank=8, mu=1,
                 minibatch_samples=None)
optim_wrapper = dict(
    optimizer=dict(type='AdamW', lr=5e-6, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0),
    clip_grad=dict(max_norm=1.0))
param_scheduler = [dict(type='LinearLR', start_factor=1.0, end_factor=0.0, by_epoch=False,
                        begin=0, end=_max_iters)]
default_hooks = dict(checkpoint=dict(interval=100))
_shapes_alternative = 'python tools/train.py configs/stage/janus-tiny_stage_jpeg.py'
