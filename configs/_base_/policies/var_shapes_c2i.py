# Shapes base model, class-conditional VAR: a depth-4, width-128 VAR transformer predicting the
# 6 scales 1-2-3-4-6-8 (130 tokens) of a small multi-scale residual VQVAE (512 codes x 16,
# downsample 4, 32 px), both pretrained by tools/pretrain_shapes.py (subcommands msvq, var-c2i),
# which reads the architectures from this file. Model cards: components/benchmarks/weights/
# msvq_shapes.md and var_shapes_c2i.md.
policy = dict(
    type='VARPolicy',
    arch=dict(depth=4, embed_dim=128, num_heads=4, drop_path_rate=0.0),
    patch_nums=(1, 2, 3, 4, 6, 8),
    image_size=32,
    num_classes=18,
    vocab_size=512,
    checkpoint='components/benchmarks/weights/var_shapes_c2i.safetensors',
    tokenizer=dict(vocab_size=512, z_channels=16, ch=16, ch_mult=(1, 2, 4), num_res_blocks=1,
                   norm_groups=8),
    tokenizer_checkpoint='components/benchmarks/weights/msvq_shapes.safetensors',
    class_dropout_prob=0.1)
# The sampling setting the model card's ShapesEval and FID were measured with: no guidance
# (vargo's cfg_scale = 1 + VAR's cfg, the guidance at the last scale of VAR's ramp; 1 = off).
# Unguided, the base model is right about half the time (strict 0.54); VAR's ramp at cfg_scale
# 2-3 lifts it to about 0.65 (model card), leaving less room for RL and doubling every batch.
sampler = dict(type='NextScaleSampler', cfg_scale=1.0, temperature=1.0, top_k=0, top_p=1.0,
               logprob_cfg='none')
