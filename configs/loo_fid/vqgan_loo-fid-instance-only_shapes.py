# The instance-reward-only twin of vqgan_loo-fid_shapes.py: the same recipe, seeds and budget
# without the LOO-FID head, for the paper's claim that the distribution-level reward prevents the
# diversity collapse of instance-only rewards (configs/loo_fid/README.md).
_base_ = ['./vqgan_loo-fid_shapes.py']
rewards = dict(_delete_=True, shapes=dict(type='ShapesEvalReward', task='c2i'))
advantage = dict(stream_weights=None)
