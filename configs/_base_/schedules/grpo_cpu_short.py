# A short CPU schedule: 30 iterations of 32 samples (8 conditions x G=4), 2 optimizer steps each.
group_size = 4
train_cfg = dict(type='GRPOLoop', max_iters=30, samples_per_rank=32, mu=1, minibatch_samples=16)
optim_wrapper = dict(optimizer=dict(type='AdamW', lr=3e-4, betas=(0.9, 0.95), weight_decay=0.0),
                     clip_grad=dict(max_norm=1.0))
param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False)]
