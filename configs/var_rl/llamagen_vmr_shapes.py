# VMR beyond VAR: the value-as-middle-return schedule on the raster Shapes LlamaGen
# (configs/grpo/llamagen_grpo_shapes.py, wrapped unchanged; docs/methods/var_rl.md, section 1).
# A decode step is a token, so the split is at a token row: m=8 keeps the first row of the 8x8
# grid. `python tools/vmr_split.py configs/grpo/llamagen_grpo_shapes.py --splits 8 16 24 32 40`:
# the first row explains 28% of the reward variance (two rows 44%, three 58%) and the
# completions of 82% of the prefixes disagree, the place VAR's m=3 holds on the Shapes VAR.
# K=2, eta=1, 3 prefix : 1 suffix update. PANW has nothing to do here (one token per step).
_base_ = ['../grpo/llamagen_grpo_shapes.py']
sampler = dict(_delete_=True, type='VMRSampler', sampler={{_base_.sampler}}, split_step=8,
               prefix_updates=3, suffix_updates=1)
rewards = dict(_delete_=True, shapes=dict(type='VMRReward', head={{_base_.rewards.shapes}},
                                          num_completions=2, eta=1.0, include_rollout=True))
