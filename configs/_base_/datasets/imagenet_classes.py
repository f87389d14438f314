# Conditions: ImageNet class ids 0..999 (class-conditional models).
train_dataloader = dict(
    dataset=dict(type='ClassConditionDataset', num_classes=1000),
    sampler=dict(type='ContiguousInfiniteSampler', shuffle=True),
    collate_fn=dict(type='default_collate'),
    num_workers=0)
