# Ablation of configs/mar_grpo/mar_mar-grpo_shapes.py: MTE on every token (no uncertainty
# selection; every extra chain is evaluated). Refinement terms and consistency as the full method.
_base_ = ['./mar_mar-grpo_shapes.py']
sampler = dict(mte_top_fraction=None)
token_selectors = dict(mte=dict(selection='all'))
