# MAR-GRPO on the Shapes MAR base: configs/grpo/mar_grpo_shapes.py plus MTE (S=3 extra head
# chains per token, guided as the rollout) on the 30% most uncertain tokens of each image.
# Nothing else differs (the GRPO job's clip, schedule and lr stay, so the comparison is the
# mechanism). Read model_zoo.md on the Shapes MAR base before drawing conclusions: GRPO on it
# hacks the reward (FID 27 -> 84), so a better base is wanted first (issue tracker).
_base_ = ['../grpo/mar_grpo_shapes.py']
sampler = dict(mte_chains=3, mte_top_fraction=0.3)
token_selectors = dict(mte=dict(type='MultiTrajectorySelector', selection='uncertain',
                                top_fraction=0.3))
