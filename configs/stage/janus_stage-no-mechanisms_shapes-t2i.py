# The GRPO arm of the STAGE comparison on the Janus-architecture Shapes base: STAGE's settings (no
# clip, mu=1, k3 KL beta 0.03, one optimizer step on all 128 samples, CFG 2 rollouts with on-policy
# log-probs) without either of STAGE's mechanisms: no similarity reweighting (plain token mean,
# every weight 1) and no entropy reward. It differs from janus_stage_shapes-t2i.py only in the two
# mechanisms (as llamagen_stage-no-mechanisms_shapes-t2i.py does on the LlamaGen base).
_base_ = ['./janus_stage_shapes-t2i.py']
token_selectors = dict(_delete_=True, all=dict(type='AllTokensSelector'))
objective = dict(aggregation='token_mean')
rewards = dict(shapes=dict(_delete_=True, type='ShapesEvalReward', task='t2i'))
