# MAR-GRPO on the Shapes MAR base (docs/methods/mar_grpo.md): configs/grpo/mar_grpo_shapes.py plus
# - the official loss's refinement terms: every AR step in the update's subset also scores the
#   head chains it ran for the tokens still masked after it (record_predictions + refinement);
# - MTE: S=3 extra head chains per token, guided as the rollout, on the 30% most uncertain tokens
#   of each image;
# - consistency-aware selection: a refinement term of step i >= 2 (0-based, official) is kept
#   only if its t=0 prediction moved closer (cosine) to the final token than at step i-1.
# Nothing else differs from the GRPO job (clip, schedule, lr, aggregation), so the comparison is
# the mechanisms; configs/mar_grpo/mar_grpo-refinement_shapes.py is the GRPO arm with the same
# refinement terms. Read model_zoo.md on the Shapes MAR base before drawing conclusions: GRPO on
# the first MAR base hacked the reward (FID 27 -> 84). Its update costs several times a GRPO
# iteration's (configs/mar_grpo/README.md, "Cost").
_base_ = ['../grpo/mar_grpo_shapes.py']
sampler = dict(record_predictions=True, refinement=True, mte_chains=3, mte_top_fraction=0.3)
token_selectors = dict(
    mte=dict(type='MultiTrajectorySelector', selection='uncertain', top_fraction=0.3),
    consistency=dict(type='ConsistencySelector', tau=0.0, start_step=2))
