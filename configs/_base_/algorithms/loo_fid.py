# LOO-FID (arXiv 2603.23086; docs/methods/loo_fid.md; official code bugrabaran/ar-policy-tuning):
# two advantage streams -- the instance rewards summed into one head (A_comp, loss weight 1) and
# the leave-one-out FID head `fid` (A_fid, loss weight 2) -- each group-normalised; a
# sequence-level importance ratio (mean token log-ratio) with PPO clip 0.2; a sequence-level k3
# KL to the frozen reference with beta 3.0; and the adaptive entropy controller.
# Not copied from the official code (docs/methods/loo_fid.md): its inverted clip bound, its
# never-updated "EMA" reference (ours is the frozen reference it effectively is), class dropout
# during log-prob passes, and the (1 - beta) scaling of the EMA bootstrap.
advantage = dict(type='GroupNormAdvantage', std_scope='group', eps=1e-4,
                 stream_weights=dict(fid=2.0))
token_selectors = dict(all=dict(type='AllTokensSelector'))
objective = dict(clip_eps=0.2, ratio_level='sequence', aggregation='sample_mean_of_token_means')
regularizers = dict(
    kl=dict(type='KLRegularizer', beta=3.0, estimator='k3',
            aggregation='sample_mean_of_token_means', level='sequence'),
    entropy=dict(type='AdaptiveEntropyRegularizer', vocab_size=16384,
                 aggregation='sample_mean_of_token_means'))
