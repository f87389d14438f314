# VAR-d16 class-conditional 256 px (310M) on the official weights, and its next-scale sampler.
# Files (download yourself): https://huggingface.co/FoundationVision/var
#   var_d16.pth            https://huggingface.co/FoundationVision/var/resolve/main/var_d16.pth
#   vae_ch160v4096z32.pth  https://huggingface.co/FoundationVision/var/resolve/main/vae_ch160v4096z32.pth
policy = dict(
    type='VARPolicy',
    arch='d16',
    patch_nums=(1, 2, 3, 4, 5, 6, 8, 10, 13, 16),
    image_size=256,
    num_classes=1000,
    vocab_size=4096,
    checkpoint='checkpoints/var/var_d16.pth',
    tokenizer='vae_ch160v4096z32',
    tokenizer_checkpoint='checkpoints/var/vae_ch160v4096z32.pth')
# VAR's FID setting (README: cfg=1.5, top_k=900, top_p=0.96); vargo's cfg_scale = 1 + cfg, the
# guidance at the last scale of the official ramp. Log-probs from conditional logits, as the
# papers train (docs/methods/grpo.md).
sampler = dict(type='NextScaleSampler', cfg_scale=2.5, temperature=1.0, top_k=900, top_p=0.96,
               logprob_cfg='none')
