# VMR alone on the Shapes VAR: configs/grpo/var_grpo_shapes.py with the value-as-middle-return
# schedule of VAR RL Done Right (docs/methods/var_rl.md, section 1). The base config's sampler
# and ShapesEval head are wrapped, unchanged; nothing else differs.
#
# Split at scale 3 of the six (1-2-3-4-6-8): the prefix is the 14 tokens of the 1x1, 2x2 and 3x3
# grids. `python tools/vmr_split.py configs/grpo/var_grpo_shapes.py` (72 prefixes x 8
# completions of the base model): the prefix explains 25% of the reward variance at m=3 (8% at
# m=1, 39% at m=4, 44% at m=5) and the completions of 81% of the prefixes still disagree, so V
# separates prefixes while suffix groups keep a signal. K=2 completions (the rollout's own and
# one more), eta=1, 3 prefix : 1 suffix update, as the paper.
_base_ = ['../grpo/var_grpo_shapes.py']
sampler = dict(_delete_=True, type='VMRSampler', sampler={{_base_.sampler}}, split_step=3,
               prefix_updates=3, suffix_updates=1)
rewards = dict(_delete_=True, shapes=dict(type='VMRReward', head={{_base_.rewards.shapes}},
                                          num_completions=2, eta=1.0, include_rollout=True))
