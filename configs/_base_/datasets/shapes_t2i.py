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
# Reward-hacking monitor (vargo.core.monitor), on in every Shapes config through this base: every
# 20 iterations and before the first, 8 fixed conditions x G samples with fixed seeds; image
# statistics and a held-out Frechet distance to the real images under monitor/, one warning line
# when one moves past its threshold. It never touches the training RNG streams.
custom_hooks = [
    dict(type='RewardHackingMonitorHook', interval=20, num_conditions=8,
         heads=dict(heldout_fd=dict(type='ShapesFrechetReward', task='t2i', split='train')),
         rules={'heldout_fd': None,   # its mean score is -fd: the rule is on fd itself
                'heldout_fd/fd': dict(direction='up', delta=0.5, relative=True)})]
