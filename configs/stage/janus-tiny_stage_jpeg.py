# STAGE's algorithm (similarity reweighting, weighted KL, entropy reward) on a small random Janus
# with DDPO's JPEG-compressibility reward: a file-free smoke job of the Janus policy that runs on
# a CPU in about a minute (the paper configs, janus-pro-7b_stage_*.py, need the 7B weights).
_base_ = [
    '../_base_/policies/janus-tiny.py', '../_base_/algorithms/stage.py',
    '../_base_/schedules/grpo_cpu_short.py', '../_base_/default_runtime.py'
]
train_dataloader = dict(
    dataset=dict(type='PromptFileDataset', path='configs/stage/prompts_example.txt'),
    sampler=dict(type='ContiguousInfiniteSampler', shuffle=True),
    collate_fn=dict(type='default_collate'),
    num_workers=0)
rewards = dict(jpeg=dict(type='StageEntropyBonus', weight=0.4,
                         base=dict(type='JpegCompressibilityReward', quality=95)))
# STAGE runs on-policy: one optimizer step per rollout (no clip)
train_cfg = dict(max_iters=10, minibatch_samples=None)
default_hooks = dict(checkpoint=dict(interval=10))
