# MAR-GRPO (arXiv 2604.06966; code AMAP-ML/mar-grpo on NOVA and Harmon) on MAR-B c2i 256 with the
# official LTH14/mar weights (configs/_base_/policies/mar-b_c2i_256.py: download mar_base.pth and
# kl16.ckpt yourself) and the CLIP + HPSv2.1 rewards of configs/_base_/rewards/
# clip_hps_imagenet.py (the paper trains text-to-image NOVA and Harmon with HPS/GenEval rewards).
# docs/methods/mar_grpo.md.
#
# The official run's settings (scripts/debug_entry_*.py of the official code): G=4, constant lr
# 1e-6 (Harmon; NOVA 2e-6), AdamW betas (0.9, 0.999), no PPO clip with one optimizer step per
# rollout (mu=1), the diffusion head frozen (fix_head; gradients flow through it into the
# transformer), conditional-only log-probs, CFG weight 5 (vargo cfg_scale 5 on MAR's linear
# schedule), temperature 1, 64 AR steps x 25 head steps, each update recomputing 12 AR steps x 10
# diffusion steps, k3 KL on the Gaussian means with beta 0.01, transitions scored with the
# variance they were drawn with. MTE: S=3 extra head chains per token for the 30% most
# uncertain tokens of each image (std of the chains' final x0); only those tokens' extra chains
# are evaluated (mte_top_fraction, same loss and gradient).
# The loss of each recomputed AR step also covers the head chains it ran for the tokens still
# masked after it (the official loss's refinement terms: record_predictions + refinement), and
# consistency-aware selection gates those from the 0-based step 2 on (tau 0). The official loss
# averages over the kept terms: weighted_token_mean (over the whole update rather than per AR
# step; docs/methods/mar_grpo.md, deviations).
_base_ = [
    '../_base_/policies/mar-b_c2i_256.py', '../_base_/rewards/clip_hps_imagenet.py',
    '../_base_/algorithms/grpo_mar.py', '../_base_/schedules/grpo_gpu_8xb16.py',
    '../_base_/datasets/imagenet_classes.py', '../_base_/default_runtime.py'
]
_shapes_alternative = 'python tools/train.py configs/mar_grpo/mar_mar-grpo_shapes.py'
policy = dict(fix_head=True, logprob_sigma='stored')
sampler = dict(cfg_scale=5.0, logprob_cfg='none', loss_ar_steps=12, loss_diffusion_steps=10,
               mte_chains=3, mte_top_fraction=0.3, record_predictions=True, refinement=True)
token_selectors = dict(
    mte=dict(type='MultiTrajectorySelector', selection='uncertain', top_fraction=0.3),
    consistency=dict(type='ConsistencySelector', tau=0.0, start_step=2))
objective = dict(clip_eps=None, aggregation='weighted_token_mean')
regularizers = dict(kl=dict(aggregation='weighted_token_mean'))
group_size = 4
train_cfg = dict(max_iters=1200, minibatch_samples=None)
optim_wrapper = dict(optimizer=dict(lr=1e-6, betas=(0.9, 0.999)))
