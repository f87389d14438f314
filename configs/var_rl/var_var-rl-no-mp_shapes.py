# Ablation of configs/var_rl/var_var-rl_shapes.py without mask propagation: VMR and PANW
# (ShapesEval reports no regions).
_base_ = ['./var_var-rl_shapes.py']
rewards = dict(shapes=dict(head=dict(regions=False)))
token_selectors = dict(_delete_=True, all=dict(type='AllTokensSelector'),
                       panw=dict(type='ScaleAreaReweightSelector', alpha=0.7))
