# A small random MAR (class-conditional, 32 px, 4 x 4 = 16 continuous tokens over a small KL VAE
# with stride 8) for the quick start and tests: the real architecture at a CPU size.
policy = dict(
    type='MARPolicy',
    arch=dict(embed_dim=64, depth=2, num_heads=4, diffloss_d=2, diffloss_w=64),
    image_size=32,
    num_classes=10,
    buffer_size=4,
    checkpoint=None,
    tokenizer=dict(embed_dim=16, ch=32, ch_mult=(1, 1, 2, 2), num_res_blocks=1, resolution=32,
                   enc_attn_resolutions=(), num_groups=8),
    tokenizer_checkpoint=None,
    fix_head=False)
sampler = dict(type='MaskedSampler', num_iter=8, num_sampling_steps=10, cfg_scale=1.0,
               cfg_schedule='linear', temperature=1.0, logprob_cfg='rollout')
