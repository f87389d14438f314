# STAGE's similarity reweighting beyond LlamaGen: the Shapes VAR GRPO job
# (configs/grpo/var_grpo_shapes.py) with SimilarityReweightSelector on its token weights
# (codebook similarity to the opposite-advantage samples of the group, at the same scale and
# cell; policy term as a weighted token mean within each group, KL weighted by m). Only the
# reweighting is added: GRPO's clip, two optimizer steps, KL beta 0.04 and the reward stay (no
# entropy reward), so it compares with var_grpo_shapes.py on that one mechanism.
_base_ = ['../grpo/var_grpo_shapes.py']
token_selectors = dict(similarity=dict(type='SimilarityReweightSelector'))
objective = dict(aggregation='group_weighted_token_mean')
