# AR-GRPO-style GPU schedule: G=8, 16 samples per GPU (2 classes), 1 optimizer step per
# iteration, AdamW lr 1e-5, grad clip 1.0, 1000 iterations.
group_size = 8
train_cfg = dict(type='GRPOLoop', max_iters=1000, samples_per_rank=16, mu=1,
                 minibatch_samples=None)
optim_wrapper = dict(optimizer=dict(type='AdamW', lr=1e-5, betas=(0.9, 0.95), weight_decay=0.0),
                     clip_grad=dict(max_norm=1.0))
param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False)]
