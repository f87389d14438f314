# STAGE ablation on Shapes: without the similarity reweighting (official --reward_smooth False
# --kl_reweight False): every token weight 1 in both terms and the policy term a plain token
# mean (the official code's else-branch). Entropy reward and KL as llamagen_stage_shapes-t2i.py.
_base_ = ['./llamagen_stage_shapes-t2i.py']
token_selectors = dict(_delete_=True, all=dict(type='AllTokensSelector'))
objective = dict(aggregation='token_mean')
