# Ablation of configs/var_rl/var_var-rl_shapes.py without VMR: PANW and mask propagation on
# plain GRPO rollouts and rewards.
_base_ = ['./var_mp_shapes.py']
token_selectors = dict(panw=dict(type='ScaleAreaReweightSelector', alpha=0.7))
