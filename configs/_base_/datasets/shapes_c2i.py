# Shapes benchmark, class-conditional: the 18 colour x shape classes (components/datasets/shapes.py).
train_dataloader = dict(
    dataset=dict(type='ShapesClassDataset', split='train'),
    sampler=dict(type='ContiguousInfiniteSampler', shuffle=True),
    collate_fn=dict(type='default_collate'),
    num_workers=0)
# tools/eval.py: every class 32 times (576 samples) against the real statistics of the 'train'
# split. The c2i 'eval' split has the same 18 classes (only its ground-truth images differ), so a
# second split would re-sample the same conditions; held-out compositions are a t2i matter.
eval_cfg = dict(
    splits=dict(train=dict(type='ShapesClassDataset', split='train')),
    samples_per_condition=32, max_conditions=None,
    fidelity=dict(extractor='vargo-shapes', task='c2i'))
