# Ablation of configs/mar_grpo/mar_mar-grpo_shapes.py without consistency-aware selection: every
# refinement term stays in the policy loss; MTE on the 30% most uncertain tokens as the full method.
_base_ = ['./mar_mar-grpo_shapes.py']
token_selectors = dict(_delete_=True, evaluated=dict(type='EvaluatedActionsSelector'),
                       mte=dict(type='MultiTrajectorySelector', selection='uncertain',
                                top_fraction=0.3))
