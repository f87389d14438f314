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
# Reward-hacking monitor (vargo.core.monitor), on in every Shapes config through this base: every
# 20 iterations and before the first, 8 fixed conditions x G samples with fixed seeds; image
# statistics and a held-out Frechet distance to the real images under monitor/, one warning line
# when one moves past its threshold. It never touches the training RNG streams.
custom_hooks = [
    dict(type='RewardHackingMonitorHook', interval=20, num_conditions=8,
         heads=dict(heldout_fd=dict(type='ShapesFrechetReward', task='c2i', split='train')),
         rules={'heldout_fd': None,   # its mean score is -fd: the rule is on fd itself
                'heldout_fd/fd': dict(direction='up', delta=0.5, relative=True)})]
