# The GRPO arm of the STAGE comparison on the text-conditional Shapes job: STAGE's settings (no
# clip, mu=1, k3 KL beta 0.03, one optimizer step on all 128 samples) without either of STAGE's
# mechanisms: no similarity reweighting (plain token mean, every weight 1) and no entropy reward.
# It differs from llamagen_stage_shapes-t2i.py only in the two mechanisms, which
# configs/grpo/llamagen_grpo_shapes-t2i.py does not (clip 0.2, beta 0.04, two minibatches).
_base_ = ['./llamagen_stage-no-reweight_shapes-t2i.py']
rewards = dict(shapes=dict(_delete_=True, type='ShapesEvalReward', task='t2i'))
