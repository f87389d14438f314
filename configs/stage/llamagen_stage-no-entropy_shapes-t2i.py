# STAGE ablation on Shapes: without the entropy reward (official --entropy_reward False): the
# plain ShapesEval reward. Similarity reweighting and KL as llamagen_stage_shapes-t2i.py.
_base_ = ['./llamagen_stage_shapes-t2i.py']
rewards = dict(shapes=dict(_delete_=True, type='ShapesEvalReward', task='t2i'))
