# Shapes benchmark, class-conditional: the 18 colour x shape classes (components/datasets/shapes.py).
train_dataloader = dict(
    dataset=dict(type='ShapesClassDataset', split='train'),
    sampler=dict(type='ContiguousInfiniteSampler', shuffle=True),
    collate_fn=dict(type='default_collate'),
    num_workers=0)
# tools/eval.py: conditions, samples per condition, and the FID reference split.
eval_cfg = dict(
    splits=dict(train=dict(type='ShapesClassDataset', split='train'),
                eval=dict(type='ShapesClassDataset', split='eval')),
    samples_per_condition=8, max_conditions=None, fidelity=dict(extractor='vargo-shapes', task='c2i'))
