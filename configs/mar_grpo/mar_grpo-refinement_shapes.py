# The GRPO arm of the MAR-GRPO comparison on Shapes: configs/grpo/mar_grpo_shapes.py with the
# official vanilla loss's refinement terms (each subset AR step also scores the head chains of
# the tokens still masked after it), no MTE and no consistency gate. It differs from
# configs/mar_grpo/mar_mar-grpo_shapes.py only in MAR-GRPO's two mechanisms.
_base_ = ['../grpo/mar_grpo_shapes.py']
sampler = dict(record_predictions=True, refinement=True)
