# VAR RL Done Right on the Shapes VAR, all three mechanisms (docs/methods/var_rl.md): VMR
# (configs/var_rl/var_vmr_shapes.py: split at scale 3, K=2, eta=1, 3 prefix : 1 suffix update),
# PANW (alpha 0.7) and mask propagation from ShapesEval's regions (background 0.05, per-scale
# renormalisation, so PANW's per-scale totals are kept). The ablations remove one each.
_base_ = ['./var_vmr_shapes.py']
rewards = dict(shapes=dict(head=dict(regions=True)))
token_selectors = dict(
    panw=dict(type='ScaleAreaReweightSelector', alpha=0.7),
    mp=dict(type='MaskPropagationSelector', source='regions', head='shapes', background=0.05,
            renormalize='per_step'))
