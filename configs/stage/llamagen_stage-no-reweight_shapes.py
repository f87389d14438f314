# STAGE ablation on the class-conditional Shapes main job: without the similarity reweighting
# (official --reward_smooth False --kl_reweight False): every token weight 1 in both terms and
# the policy term a plain token mean. Entropy reward and KL as llamagen_stage_shapes.py. It
# isolates what the reweighting does to where the shapes are drawn (configs/stage/README.md).
_base_ = ['./llamagen_stage_shapes.py']
token_selectors = dict(_delete_=True, all=dict(type='AllTokensSelector'))
objective = dict(aggregation='token_mean')
