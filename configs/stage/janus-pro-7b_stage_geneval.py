# STAGE (arXiv 2509.25027) on Janus-Pro-7B, the paper's own system, with the GenEval run's
# settings (official scripts/run_training_geneval.py of krennic999/STAGE): G=8, lr 5e-6, beta
# 0.03, entropy reward on (weight 0.4), mu=1 without clip, similarity reweighting of the policy
# and KL terms, rollout CFG 5 / temperature 1 / no top-k, 1600 steps, grad clip 1.0, AdamW with
# Hugging Face Trainer defaults (betas 0.9, 0.999, no weight decay) and its linear decay to 0.
# Global batch as the GenEval run: 8 GPUs x 1 prompt x G=8 = 64 images per optimizer step.
# Prompt template: STAGE's trainer writes the roles "User" / "Assistant" (Janus-Pro's README:
# "<|User|>" / "<|Assistant|>", the policy's default).
#
# Reward: the GenEval partial credit STAGE trains with (its src/utils/reward_geneval.py, Flow-GRPO's
# scorer: per clause 1 - |asked - found| / asked, colour and position terms, averaged;
# GenEvalReward(score='partial'), components/rewards/geneval_rules.py), wrapped in STAGE's
# entropy reward. The detector is transformers' Mask2Former with the Hugging Face Swin-S COCO
# release, not the official mmdet checkpoint (mmdet 2.x does not install; scores differ by an
# unmeasured amount: components/rewards/geneval.py). tools/eval.py scores GenEval's own
# protocol (evaluation prompts, 4 samples each, seed 42, strict correctness) and prints its table.
#
# Files (download yourself; nothing is downloaded at run time; a missing one fails at start):
#   checkpoints/Janus-Pro-7B/   https://huggingface.co/deepseek-community/Janus-Pro-7B
#   data/geneval/train_metadata.jsonl   the training prompts: Flow-GRPO's
#       https://github.com/yifan123/flow_grpo/blob/main/dataset/geneval/train_metadata.jsonl
#       (STAGE trains on data/janus_geneval_prompts/evaluation_metadata_flow_grpo.json, its copy)
#   data/geneval/evaluation_metadata.jsonl   GenEval's evaluation prompts
#       https://github.com/djghosh13/geneval/blob/main/prompts/evaluation_metadata.jsonl
#   checkpoints/geneval/mask2former-swin-small-coco-instance/
#       https://huggingface.co/facebook/mask2former-swin-small-coco-instance
#   checkpoints/clip/open_clip_model.safetensors
#       https://huggingface.co/timm/vit_large_patch14_clip_224.openai
_base_ = [
    '../_base_/policies/janus-pro-7b.py', '../_base_/algorithms/stage.py',
    '../_base_/rewards/geneval.py', '../_base_/default_runtime.py',
    '../_base_/sharding/fsdp_bf16.py'   # sharded over the processes, bf16 (docs/design.md)
]
policy = dict(roles=('User', 'Assistant'))
_train_metadata = 'data/geneval/train_metadata.jsonl'
train_dataloader = dict(dataset=dict(path=_train_metadata))
# One head scores the training prompts and GenEval's evaluation prompts (tools/eval.py, where
# the entropy reward is left out and the GenEval summary is the strict correctness).
rewards = dict(
    _delete_=True,
    geneval=dict(
        type='StageEntropyBonus', weight=0.4,
        base=dict(type='GenEvalReward', score='partial',
                  metadata_file=[_train_metadata, 'data/geneval/evaluation_metadata.jsonl'],
                  detector_dir='checkpoints/geneval/mask2former-swin-small-coco-instance',
                  clip_checkpoint='checkpoints/clip/open_clip_model.safetensors',
                  clip_arch='ViT-L-14', clip_weights_tag='openai')))
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
