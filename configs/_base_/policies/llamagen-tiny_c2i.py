# A small random LlamaGen (class-conditional, 32 px, 8x8 tokens over a 512-code VQ) for the
# quick start and tests: the real architecture at a size that trains on a CPU in minutes.
policy = dict(
    type='LlamaGenPolicy',
    arch=dict(dim=128, n_layer=4, n_head=4),
    task='c2i',
    image_size=32,
    downsample=4,
    num_classes=10,
    vocab_size=512,
    tokenizer=dict(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, z_channels=32,
                   codebook_size=512, codebook_embed_dim=8, norm_groups=8),
    tokenizer_checkpoint=None)
sampler = dict(type='ARSampler', cfg_scale=1.0, temperature=1.0, top_k=0, top_p=1.0,
               logprob_cfg='none')
