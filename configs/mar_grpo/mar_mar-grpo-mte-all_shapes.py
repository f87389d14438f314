# Ablation of configs/mar_grpo/mar_mar-grpo_shapes.py: MTE on every token (no uncertainty
# selection; every extra chain is evaluated).
_base_ = ['../grpo/mar_grpo_shapes.py']
sampler = dict(mte_chains=3)
token_selectors = dict(mte=dict(type='MultiTrajectorySelector', selection='all'))
