# Conditions: class ids 0..9 (the small class-conditional models).
train_dataloader = dict(
    dataset=dict(type='ClassConditionDataset', num_classes=10),
    sampler=dict(type='ContiguousInfiniteSampler', shuffle=True),
    collate_fn=dict(type='default_collate'),
    num_workers=0)
