# Ablation of configs/mar_grpo/mar_mar-grpo_shapes.py without MTE: every token keeps its single
# rollout chain; refinement terms and the consistency gate as the full method.
_base_ = ['./mar_mar-grpo_shapes.py']
sampler = dict(mte_chains=0, mte_top_fraction=None)
token_selectors = dict(_delete_=True, evaluated=dict(type='EvaluatedActionsSelector'),
                       consistency=dict(type='ConsistencySelector', tau=0.0, start_step=2))
