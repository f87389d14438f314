# Shapes base model, class-conditional VQGAN transformer (taming-transformers): a 4-layer,
# width-128 minGPT over the 8 x 8 codes of a small taming VQGAN (512 Euclidean codes x 16,
# downsample 4, attention at 8 px, 32 px), the class id as its first token, both pretrained by
# tools/pretrain_shapes.py (subcommands vqgan, vqgan-c2i), which reads the architectures from
# this file. Model cards: components/benchmarks/weights/vqgan_shapes.md and vqgan_shapes_c2i.md.
# Downsample 4, not the cin model's 16: f16 would leave 2 x 2 tokens of a 32-px image; f4 gives
# the 8 x 8 grid of the LlamaGen, VAR (last scale) and MAR Shapes bases.
policy = dict(
    type='VQGANTransformerPolicy',
    arch=dict(n_layer=4, n_head=4, n_embd=128),
    image_size=32,
    num_classes=18,
    vocab_size=512,
    checkpoint='components/benchmarks/weights/vqgan_shapes_c2i.safetensors',
    tokenizer=dict(n_embed=512, embed_dim=16, ch=16, ch_mult=(1, 2, 4), num_res_blocks=1,
                   attn_resolutions=(8,), resolution=32, z_channels=64, norm_groups=8),
    tokenizer_checkpoint='components/benchmarks/weights/vqgan_shapes.safetensors')
# The sampling setting the model card's ShapesEval and FID were measured with: the official
# sampler without truncation, no guidance (the model has no null class).
sampler = dict(type='ARSampler', cfg_scale=1.0, temperature=1.0, top_k=0, top_p=1.0,
               logprob_cfg='none')
