# Vanilla GRPO (arXiv 2402.03300, docs/methods/grpo.md): group-normalised advantage, PPO clip,
# per-sample token means, k3 KL to the frozen reference.
advantage = dict(type='GroupNormAdvantage', std_scope='group', eps=1e-4)
token_selectors = dict(all=dict(type='AllTokensSelector'))
objective = dict(clip_eps=0.2, ratio_level='token', aggregation='sample_mean_of_token_means')
regularizers = dict(
    kl=dict(type='KLRegularizer', beta=0.04, estimator='k3',
            aggregation='sample_mean_of_token_means'))
