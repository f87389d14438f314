# The toy GRPO config with plain SGD (for float-tolerance comparisons across process counts).
_base_ = ['./toy_grpo.py']
optim_wrapper = dict(_delete_=True, optimizer=dict(type='SGD', lr=0.5))
