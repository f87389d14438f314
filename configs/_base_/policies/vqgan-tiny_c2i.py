# A small random VQGAN transformer (class-conditional, 32 px, 8 x 8 tokens over a 512-code VQGAN)
# for tests: the cin architecture (minGPT + VQGAN f4) at a size that runs on a CPU in seconds.
policy = dict(
    type='VQGANTransformerPolicy',
    arch=dict(n_layer=4, n_head=4, n_embd=128),
    image_size=32,
    num_classes=10,
    vocab_size=512,
    checkpoint=None,
    tokenizer=dict(n_embed=512, embed_dim=16, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1,
                   attn_resolutions=(8,), resolution=32, z_channels=32, norm_groups=8),
    tokenizer_checkpoint=None)
sampler = dict(type='ARSampler', cfg_scale=1.0, temperature=1.0, top_k=0, top_p=1.0,
               logprob_cfg='none')
