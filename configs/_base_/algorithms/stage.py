# STAGE (arXiv 2509.25027, docs/methods/stage.md; code krennic999/STAGE): GRPO's group-normalised
# advantage; no PPO clip (mu=1: one optimizer step per rollout, ratio 1 in value); token weights
# from codebook similarity to the opposite-advantage samples of the group (policy term: weighted
# token mean sum(w rho A) / (sum w + 1e-6) within each group, averaged over groups); k3 KL weighted by m in [0.5, 1], token mean.
# beta 0.03 is the GenEval run's (the paper's headline; the HPS run uses 0.01). The entropy
# reward wraps the main reward head (StageEntropyBonus), so it is set with the rewards.
advantage = dict(type='GroupNormAdvantage', std_scope='group', eps=1e-4)
token_selectors = dict(similarity=dict(type='SimilarityReweightSelector'))
objective = dict(clip_eps=None, ratio_level='token', aggregation='group_weighted_token_mean')
regularizers = dict(
    kl=dict(type='KLRegularizer', beta=0.03, estimator='k3', aggregation='token_mean'))
