# GRPO with AR-GRPO-style settings (docs/methods/grpo.md): the policy and KL terms averaged over
# every token of the batch (token-mean, BNPO-like) instead of per-sample token means, and a
# stronger k3 KL (beta 0.1) as the instance-reward baselines of the papers vargo compares with.
_base_ = ['./grpo.py']
objective = dict(aggregation='token_mean')
regularizers = dict(kl=dict(beta=0.1, aggregation='token_mean'))
