# Shapes benchmark, text-conditional: compositional prompts (single, count, binding, position);
# 'eval' holds the prompts that compose held-out colour-shape pairs (components/datasets/shapes.py).
train_dataloader = dict(
    dataset=dict(type='ShapesPromptDataset', split='train'),
    sampler=dict(type='ContiguousInfiniteSampler', shuffle=True),
    collate_fn=dict(type='default_collate'),
    num_workers=0)
# tools/eval.py: a fixed, seeded subset of each split's prompts, samples per prompt, FID reference.
eval_cfg = dict(
    splits=dict(train=dict(type='ShapesPromptDataset', split='train', num_prompts=96, seed=0),
                eval=dict(type='ShapesPromptDataset', split='eval', num_prompts=96, seed=0)),
    samples_per_condition=4, max_conditions=None, fidelity=dict(extractor='vargo-shapes', task='t2i'))
