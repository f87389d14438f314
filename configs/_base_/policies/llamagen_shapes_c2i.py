# Shapes base model, class-conditional: a tiny LlamaGen GPT over the 8 x 8 tokens of a small
# LlamaGen VQ (512 L2-normalised codes x 8), pretrained by tools/pretrain_shapes.py, which reads
# the architectures from this file. Model cards: components/benchmarks/weights/*.md.
policy = dict(
    type='LlamaGenPolicy',
    arch=dict(dim=128, n_layer=4, n_head=4),
    task='c2i',
    image_size=32,
    downsample=4,
    num_classes=18,
    vocab_size=512,
    checkpoint='components/benchmarks/weights/llamagen_shapes_c2i.safetensors',
    tokenizer=dict(ch=16, ch_mult=(1, 2, 4), num_res_blocks=1, z_channels=64,
                   codebook_size=512, codebook_embed_dim=8, codebook_l2_norm=True,
                   codebook_show_usage=False, norm_groups=8),
    tokenizer_checkpoint='components/benchmarks/weights/vq_shapes.safetensors',
    class_dropout_prob=0.1)
# The sampling setting the model card's ShapesEval and FID were measured with.
sampler = dict(type='ARSampler', cfg_scale=2.0, temperature=1.0, top_k=0, top_p=1.0,
               logprob_cfg='none')
