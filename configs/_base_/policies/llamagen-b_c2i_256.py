# LlamaGen GPT-B class-conditional 256 px on the official weights, and its raster sampler.
# Files (download yourself): https://huggingface.co/FoundationVision/LlamaGen
policy = dict(
    type='LlamaGenPolicy',
    arch='GPT-B',
    task='c2i',
    image_size=256,
    downsample=16,
    num_classes=1000,
    vocab_size=16384,
    checkpoint='checkpoints/llamagen/c2i_B_256.pt',
    tokenizer='VQ-16',
    tokenizer_checkpoint='checkpoints/llamagen/vq_ds16_c2i.pt')
# LlamaGen's c2i sampling defaults (sample_c2i.py: cfg 4.0, top-k 0, top-p 1.0, temperature 1.0);
# log-probs from conditional logits, as the papers train (docs/methods/grpo.md).
sampler = dict(type='ARSampler', cfg_scale=4.0, temperature=1.0, top_k=0, top_p=1.0,
               logprob_cfg='none')
