# Ablation of configs/var_rl/var_var-rl_shapes.py without PANW: VMR and mask propagation.
_base_ = ['./var_var-rl_shapes.py']
token_selectors = dict(_delete_=True, all=dict(type='AllTokensSelector'),
                       mp=dict(type='MaskPropagationSelector', source='regions', head='shapes',
                               background=0.05, renormalize='per_step'))
