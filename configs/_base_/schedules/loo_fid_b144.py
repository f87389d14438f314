# LOO-FID's schedule (arXiv 2603.23086, official train.sh of bugrabaran/ar-policy-tuning): G=12,
# 12 classes (144 samples) per GPU, mu=2 epochs over the whole rollout (one optimizer step each),
# 600 iterations, AdamW lr 1e-5 (0.9, 0.95) with weight decay 0.01, grad clip 1.0, constant lr.
group_size = 12
train_cfg = dict(type='GRPOLoop', max_iters=600, samples_per_rank=144, mu=2,
                 minibatch_samples=None)
optim_wrapper = dict(optimizer=dict(type='AdamW', lr=1e-5, betas=(0.9, 0.95), weight_decay=0.01),
                     clip_grad=dict(max_norm=1.0))
param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False)]
