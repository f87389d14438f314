# STAGE ablation on Shapes: without the KL term (beta 0), so the KL weights m do nothing; the
# similarity weights of the policy term and the entropy reward stay (the entropy reward still
# compares with the frozen reference).
_base_ = ['./llamagen_stage_shapes-t2i.py']
regularizers = dict(kl=None)
