# A toy GRPO config for testing the runner (policy: tests/toy_components.py).
_base_ = ['../../configs/_base_/default_runtime.py']
custom_imports = dict(imports=['toy_components'], allow_failed_imports=False)

policy = dict(type='ToyPolicy', num_classes=4, side=4, vocab_size=8)
sampler = dict(type='ToySampler', temperature=1.0, logprob_cfg='none')
rewards = dict(jpeg=dict(type='JpegCompressibilityReward', quality=95))
advantage = dict(type='GroupNormAdvantage', std_scope='group')
token_selectors = dict(all=dict(type='AllTokensSelector'))
objective = dict(clip_eps=0.2, ratio_level='token', aggregation='sample_mean_of_token_means')
regularizers = dict(kl=dict(type='KLRegularizer', beta=0.04, estimator='k3',
                            aggregation='sample_mean_of_token_means'))
group_size = 4

train_dataloader = dict(
    dataset=dict(type='ClassConditionDataset', num_classes=4),
    sampler=dict(type='ContiguousInfiniteSampler', shuffle=True),
    collate_fn=dict(type='default_collate'),
    num_workers=0)
train_cfg = dict(type='GRPOLoop', max_iters=6, samples_per_rank=16, mu=2, minibatch_samples=8)
optim_wrapper = dict(optimizer=dict(type='AdamW', lr=1e-2, betas=(0.9, 0.95), weight_decay=0.0),
                     clip_grad=dict(max_norm=1.0))
param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False)]
default_hooks = dict(checkpoint=dict(interval=3), image_grid=dict(interval=2, preview_conditions=2))
