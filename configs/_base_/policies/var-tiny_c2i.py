# A small random VAR (class-conditional, 32 px, scales 1-2-4-8 = 85 tokens over a 512-code
# multi-scale VQVAE) for the quick start and tests: the real architecture at a CPU size.
policy = dict(
    type='VARPolicy',
    arch=dict(depth=4, embed_dim=128, num_heads=4),
    patch_nums=(1, 2, 4, 8),
    image_size=32,
    num_classes=10,
    vocab_size=512,
    tokenizer=dict(vocab_size=512, z_channels=16, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1,
                   norm_groups=8),
    tokenizer_checkpoint=None)
sampler = dict(type='NextScaleSampler', cfg_scale=1.0, temperature=1.0, top_k=0, top_p=1.0,
               logprob_cfg='none')
