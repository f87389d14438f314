# Mask propagation alone on the Shapes VAR: configs/grpo/var_grpo_shapes.py with ShapesEval
# reporting regions (the boxes of the colour components it scored; the whole image when an
# asked-for object is missing) and MP's token gate (docs/methods/var_rl.md, section 3): the
# mask, max-pooled to each scale's grid, keeps weight 1 on the tokens whose cell it touches and
# 0.05 elsewhere, renormalised within each scale (per_step), so MP moves weight inside a scale
# and never between scales. Nothing else differs.
_base_ = ['../grpo/var_grpo_shapes.py']
rewards = dict(shapes=dict(regions=True))
token_selectors = dict(mp=dict(type='MaskPropagationSelector', source='regions', head='shapes',
                               background=0.05, renormalize='per_step'))
