# Shapes base model, class-conditional MAR: a width-128 MAE encoder/decoder (3 + 3 blocks, 4
# class-buffer slots) with a DiffLoss MLP head (3 AdaLN res-blocks of width 128) generating the
# 8 x 8 = 64 continuous tokens (4 channels) of a small KL VAE (stride 4, 32 px), both pretrained
# by tools/pretrain_shapes.py (subcommands kl-vae, mar-c2i; the MAR on the VAE's posterior
# means, not samples as the official MAR), which reads the architectures from this file. Model
# cards: components/benchmarks/weights/kl_vae_shapes.md and mar_shapes_c2i.md.
# The head is a flow (velocity) head sampled with Flow-GRPO's SDE (NOVA-style MAR-GRPO), not the
# official DDPM eps head: the respaced cosine chain's first step (t = 999, abar ~ 2e-9) multiplies
# the head's eps error by ~1300 at 25 steps (~350 at 100), and a head this small stays ~1e-2 off
# (measured: DDPM head after 900 steps, and even after 300 steps trained on t = 999 alone), so
# its samples diverge (token std ~700); the flow SDE's coefficients are bounded.
policy = dict(
    type='MARPolicy',
    arch=dict(embed_dim=128, depth=3, num_heads=4, diffloss_d=3, diffloss_w=128),
    image_size=32,
    num_classes=18,
    buffer_size=4,
    checkpoint='components/benchmarks/weights/mar_shapes_c2i.safetensors',
    checkpoint_key='model_ema',
    # scale_factor: 1 / std of the VAE's latents on Shapes images, so the diffusion head sees
    # unit-scale tokens (as MAR's 0.2325 for KL-16 on ImageNet; kl_vae_shapes.md)
    tokenizer=dict(embed_dim=4, ch=16, ch_mult=(1, 2, 4), num_res_blocks=1, resolution=32,
                   enc_attn_resolutions=(), num_groups=8, scale_factor=1.08),
    tokenizer_checkpoint='components/benchmarks/weights/kl_vae_shapes.safetensors',
    fix_head=False,
    head_type='flow',
    label_drop_prob=0.1,
    # masking ratio of pretraining: the truncated normal of mode 1 reaches down to 0 (official
    # >= 0.7, std 0.25), so training also sees the nearly complete contexts of the last decoding
    # steps (docs/experiments/mar_shapes_base: no measurable effect at 2400 steps; kept because
    # the run that learned to use its context had it)
    mask_ratio_min=0.0,
    mask_ratio_std=0.5,
    # no dropout (official 0.1): every training image is fresh, nothing to regularise against
    attn_dropout=0.0,
    proj_dropout=0.0)
# The sampling setting the model card's ShapesEval and FID were measured with: no guidance, 16 AR
# steps, 25 flow-SDE head steps (noise level 0.7, Flow-GRPO's). Imperfect: unguided the base model
# is right a bit less than half of the time (strict 0.44, FID 6.2; 0.53 at CFG 2: model card),
# below the LlamaGen and VAR bases; the first base (posterior samples, 2400 steps) was at 0.17
# because it did not use its context, the second (4000 steps) at 0.29
# (docs/experiments/mar_shapes_base).
sampler = dict(type='MaskedSampler', num_iter=16, num_sampling_steps=25, cfg_scale=1.0,
               cfg_schedule='linear', temperature=1.0, logprob_cfg='rollout',
               head_sampler='flow_sde', sde_noise_level=0.7)
