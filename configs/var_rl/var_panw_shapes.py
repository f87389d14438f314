# PANW alone on the Shapes VAR: configs/grpo/var_grpo_shapes.py plus the per-scale area
# reweighting of VAR RL Done Right (docs/methods/var_rl.md, section 2). Nothing else differs.
_base_ = ['../grpo/var_grpo_shapes.py']
token_selectors = dict(panw=dict(type='ScaleAreaReweightSelector', alpha=0.7))
