# STAGE ablation on the class-conditional Shapes main job: without the entropy reward (the
# official --entropy_reward off): ShapesEval alone is the reward. Similarity reweighting, KL and
# everything else as llamagen_stage_shapes.py.
_base_ = ['./llamagen_stage_shapes.py']
rewards = dict(shapes=dict(_delete_=True, type='ShapesEvalReward', task='c2i'))
